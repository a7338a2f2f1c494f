"""search.fuse as a sweep applies it: sequential on the CPU, as many as fit on CUDA (tests/test_gpu.py runs it)."""

from __future__ import annotations

import pytest
import torch

from kdbench.config import parse_study
from kdbench.data.catalog import DATASETS
from kdbench.defaults import FUSE_AUTO_MAX, FUSE_MEMORY_SHARE
from kdbench.models import build_model
from kdbench.sweep.fuse import FusePlan, fuse_plan, student_training_bytes

INFO = DATASETS["fashion-mnist"]
CUDA = torch.device("cuda")  # a device object only: fuse_plan reads no GPU when given free_bytes


def _study(fuse: object, batch_size: int = 128):  # type: ignore[no-untyped-def]
    return parse_study({"name": "f", "student": {"model": "mlp-800", "batch_size": batch_size},
                        "search": {"fuse": fuse}})


def test_auto_is_the_default_and_sequential_on_the_cpu() -> None:
    assert _study("auto").search.fuse == "auto" == parse_study({"name": "f"}).search.fuse
    cpu = torch.device("cpu")
    assert fuse_plan(_study("auto"), cpu, INFO) == fuse_plan(_study(1), cpu, INFO) == FusePlan(1, "")


def test_an_explicit_fuse_is_not_applied_on_the_cpu_and_says_why() -> None:
    plan = fuse_plan(_study(8), torch.device("cpu"), INFO)
    assert plan.k == 1
    assert plan.why.startswith("search.fuse: 8 is not applied on the CPU") and "\n" not in plan.why


def test_mlp_training_memory_by_hand() -> None:
    # mlp-800: 784*800+800 + 800*800+800 + 800*10+10 parameters; per image the modules output
    # 784 (flatten) + 800 + 800 (linear, relu) + 800 + 800 + 10 values
    params = 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    outputs = 784 + 800 + 800 + 800 + 800 + 10
    model = build_model("mlp-800", in_channels=1, num_classes=10, image_size=28)
    assert student_training_bytes(model, 128, INFO) == 4 * (4 * params + 128 * outputs)
    assert model.training  # the estimate leaves the model as it found it


def test_auto_on_cuda_fuses_what_fits() -> None:
    study = _study("auto")
    need = student_training_bytes(build_model("mlp-800", in_channels=1, num_classes=10, image_size=28), 128, INFO)
    assert fuse_plan(study, CUDA, INFO, free_bytes=1 << 40).k == FUSE_AUTO_MAX
    plan = fuse_plan(study, CUDA, INFO, free_bytes=int(10.5 * need / FUSE_MEMORY_SHARE))
    assert plan.k == 10 and "fusing up to 10 search visits" in plan.why
    plan = fuse_plan(study, CUDA, INFO, free_bytes=need)
    assert plan.k == 1 and "sequential" in plan.why
    assert fuse_plan(_study(8), CUDA, INFO, free_bytes=0).k == 8  # an explicit K on CUDA is the user's


@pytest.mark.parametrize("bad", [0, -1, "always", 1.5])
def test_bad_fuse_values_are_refused(bad: object) -> None:
    from kdbench.errors import ConfigError
    with pytest.raises(ConfigError, match=r"search\.fuse"):
        _study(bad)
