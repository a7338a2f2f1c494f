"""The GPU path: data and logits on the device, bf16 autocast, channels_last, no host sync in the step
loop, torch.compile once per process, fused == sequential on CUDA. Skipped without CUDA."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from kdbench.config import parse_study
from kdbench.data import load_data
from kdbench.fused import FusedStudent, train_fused
from kdbench.models import build_model
from kdbench.train import CachedLogits, KDParams, TrainResult, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def _data():  # type: ignore[no-untyped-def]
    data = load_data("fashion-mnist", val_fraction=0.05, subset=1280, seed=0, device=CUDA)
    return dataclasses.replace(data, val=data.val.take(torch.arange(512)), test=data.test.take(torch.arange(512)))


def _logits(data) -> CachedLogits:  # type: ignore[no-untyped-def]
    return CachedLogits(torch.randn(1, len(data.train), 10, device=CUDA).half())


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_channels=1, num_classes=10, image_size=28).to(CUDA)


def _recipe(**kw):  # type: ignore[no-untyped-def]
    return parse_study({"name": "g", "student": {"model": "cnn-s", "batch_size": 64, **kw}}).student


def test_everything_resident_and_bf16_channels_last(needs_fmnist: None) -> None:
    data = _data()
    logits = _logits(data)
    assert data.train.images.is_cuda and data.val.images.is_cuda and logits.logits.is_cuda
    model = _model("cnn-s")
    seen = {}

    def hook(mod, inp, out) -> None:  # type: ignore[no-untyped-def]
        seen["in_cl"] = inp[0].is_contiguous(memory_format=torch.channels_last)
        seen["out_dtype"] = out.dtype

    next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(hook)
    res = train(model, data, _recipe(steps=5), kd=KDParams(4.0, 0.5), teacher=logits, augment_kind="crop+flip")
    assert res.device.startswith("cuda") and res.steps == 5
    assert seen == {"in_cl": True, "out_dtype": torch.bfloat16}
    assert torch.backends.cudnn.benchmark


def _sync_warnings(steps: int) -> int:
    data = _data()
    recipe = _recipe(steps=steps, batch_size=32)  # 40 steps per epoch: one epoch either way
    train(_model("cnn-s"), data, recipe, kd=KDParams(4.0, 0.5), teacher=_logits(data))  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(_model("cnn-s"), data, recipe, kd=KDParams(4.0, 0.5), teacher=_logits(data))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_no_host_sync_inside_the_step_loop(needs_fmnist: None) -> None:
    # syncs happen at the epoch's end (loss read-back, validation); 30 more steps add none
    assert _sync_warnings(5) == _sync_warnings(35)


def test_compile_once_then_reinitialise(needs_fmnist: None) -> None:
    from torch._dynamo.utils import counters

    data = _data()
    recipe = _recipe(steps=5, compile=True)
    first = _model("cnn-s")
    torch.manual_seed(1)
    second = build_model("cnn-s", in_channels=1, num_classes=10, image_size=28).to(CUDA)
    before = [p.detach().clone() for p in second.parameters()]
    train(first, data, recipe)
    graphs = counters["stats"]["unique_graphs"]
    res = train(second, data, recipe)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation for the second trial
    assert res.steps == 5 and any(not torch.equal(a, b) for a, b in zip(before, second.parameters(), strict=True))


@pytest.mark.parametrize("name", ["cnn-s", "mlp-800"])
def test_fused_equals_sequential_on_cuda(needs_fmnist: None, name: str) -> None:
    data = _data()
    logits = _logits(data)
    recipe = _recipe(model=name, steps=10, amp=False)
    cfg = [(1e-3, KDParams(2.0, 0.5)), (3e-3, KDParams(8.0, 0.1)), (5e-4, None)]
    seq = [train(_model(name), data, recipe, lr=lr, kd=kd, teacher=logits, keep_step_losses=True) for lr, kd in cfg]
    fused = train_fused([_model(name) for _ in cfg], data, recipe, [FusedStudent(lr, kd) for lr, kd in cfg],
                        teacher=logits, keep_step_losses=True)
    for s, f in zip(seq, fused, strict=True):
        assert isinstance(f, TrainResult)
        # TF32 convolutions (grouped under vmap, single without) round differently: looser than on the CPU
        torch.testing.assert_close(torch.tensor(f.step_losses), torch.tensor(s.step_losses), rtol=1e-2, atol=1e-2)


def test_a_cuda_sweep_fuses_search_visits_by_default(needs_fmnist: None, tiny_study_dict: dict, tmp_path) -> None:
    """search.fuse: auto on CUDA fuses one seed's search visits, says so once, and stores it with each run."""
    from kdbench.store import load_runs
    from kdbench.sweep import run_sweep
    from kdbench.sweep.events import SweepEvents

    study = parse_study(tiny_study_dict, overrides=["finalists.seeds=1", "search.replicates=2"])
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    lines: list[str] = []
    run_sweep(study, storage=url, device=CUDA, cache_dir=tmp_path / "cache", events=SweepEvents(on_log=lines.append))
    runs = load_runs(url, "tiny")
    assert set(runs["state"]) == {"complete"}
    search = runs[runs["kind"] != "finalist"]
    assert search["device"].str.endswith("fused x3").all(), search["device"].tolist()  # 3 visits per seed
    assert not runs[runs["kind"] == "finalist"]["device"].str.contains("fused").any()
    assert sum("search.fuse: auto: fusing up to" in line for line in lines) == 1, lines
