"""Tests for kdbench.models: every registered network's shapes and sizes, and checkpoint loading."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdbench.errors import CheckpointError, ConfigError
from kdbench.models import (
    MODELS,
    ModelSpec,
    build_model,
    count_parameters,
    get_model_spec,
    list_models,
    load_state_dict_file,
)

SLOW_MODELS = {"resnet50", "resnet34", "resnet110", "resnet32x4", "wrn-40-2"}

MNIST = {"in_channels": 1, "num_classes": 10, "image_size": 28}
CIFAR10 = {"in_channels": 3, "num_classes": 10, "image_size": 32}
CIFAR100 = {"in_channels": 3, "num_classes": 100, "image_size": 32}


def _model_params() -> list[object]:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_MODELS else name for name in list_models()]


@pytest.mark.parametrize("name", _model_params())
@pytest.mark.parametrize("shape", [(1, 28, 28, 10), (3, 32, 32, 100)], ids=["1x28x28-10", "3x32x32-100"])
def test_output_shape(name: str, shape: tuple[int, int, int, int]) -> None:
    channels, height, width, classes = shape
    model = build_model(name, in_channels=channels, num_classes=classes, image_size=height)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, height, width))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name",
    [
        "cnn-s",
        "cnn-m",
        "mlp-800",
        "resnet8",
        pytest.param("wrn-16-2", marks=pytest.mark.slow),
        pytest.param("resnet18", marks=pytest.mark.slow),
    ],
)
def test_other_image_sizes_and_a_backward_pass(name: str) -> None:
    # 16 px is the smallest size promised; 40 px is neither 28 nor 32.
    for size in (16, 40):
        model = build_model(name, in_channels=3, num_classes=7, image_size=size)
        out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 7)
        out.sum().backward()


def test_parameter_counts_of_the_small_models() -> None:
    assert 10_000 <= count_parameters(build_model("cnn-s", **MNIST)) <= 20_000
    assert 500_000 <= count_parameters(build_model("cnn-m", **MNIST)) <= 2_000_000
    hidden = 800
    expected = 784 * hidden + hidden + hidden * hidden + hidden + hidden * 10 + 10
    assert count_parameters(build_model("mlp-800", **MNIST)) == expected
    hidden = 1200
    expected = 784 * hidden + hidden + hidden * hidden + hidden + hidden * 10 + 10
    assert count_parameters(build_model("mlp-1200", **MNIST)) == expected


@pytest.mark.parametrize(
    ("name", "dataset", "published"),
    [
        # RepDistiller (Tian et al. 2020) / He et al. 2016 parameter counts.
        ("resnet20", CIFAR10, 0.27e6),
        ("resnet8x4", CIFAR100, 1.23e6),
        pytest.param("resnet32x4", CIFAR100, 7.43e6, marks=pytest.mark.slow),
        ("wrn-40-2", CIFAR100, 2.26e6),
    ],
)
def test_cifar_parameter_counts_match_the_papers(
    name: str, dataset: dict[str, int], published: float
) -> None:
    assert count_parameters(build_model(name, **dataset)) == pytest.approx(published, rel=0.03)


def test_torchvision_resnet_stem_depends_on_image_size() -> None:
    small = build_model("resnet18", in_channels=1, num_classes=10, image_size=32)
    assert isinstance(small, nn.Module)
    conv1 = small.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(small.get_submodule("maxpool"), nn.Identity)

    large = build_model("resnet18", in_channels=1, num_classes=10, image_size=96)
    conv1 = large.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (7, 7), (2, 2))
    assert isinstance(large.get_submodule("maxpool"), nn.MaxPool2d)


def has_batchnorm(model: nn.Module) -> bool:
    """Return whether ``model`` contains a batch-norm layer (whose statistics depend on train/eval mode)."""
    # _BatchNorm is the common base of BatchNorm1d/2d/3d, their Lazy variants and SyncBatchNorm.
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_has_batchnorm() -> None:
    assert has_batchnorm(build_model("cnn-s", **MNIST))
    assert has_batchnorm(build_model("resnet8", **CIFAR10))
    assert not has_batchnorm(build_model("mlp-800", **MNIST))


def test_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9'; choose one of: .*resnet8x4") as info:
        build_model("resnet9", **CIFAR10)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_sizes_must_be_positive_integers() -> None:
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        build_model("cnn-s", in_channels=1, num_classes=0, image_size=28)


# --------------------------------------------------------------------------------------------------
# The registry: one ModelSpec per model
# --------------------------------------------------------------------------------------------------

ZOO = [
    "cnn-s", "cnn-m", "mlp-800", "mlp-1200",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn-16-2", "wrn-40-2", "resnet18", "resnet34", "resnet50",
]  # fmt: skip


def test_list_models_lists_exactly_the_registry() -> None:
    assert list_models() == ZOO
    assert list(MODELS) == ZOO
    assert all(MODELS[name].name == name and get_model_spec(name) is MODELS[name] for name in ZOO)
    names = list_models()
    names.append("mine")
    assert list_models() == ZOO  # a new list each call


def test_the_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODELS["mine"] = MODELS["cnn-s"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODELS["cnn-s"].name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", ZOO)
def test_every_record_says_what_it_is(name: str) -> None:
    spec = MODELS[name]
    assert ":" not in spec.name  # kept for names resolved outside the zoo
    assert spec.family in {"mlp", "cnn", "resnet", "wide-resnet"}
    assert spec.summary and "\n" not in spec.summary
    assert spec.source and "\n" not in spec.source
    assert spec.convolutional == (spec.family != "mlp")


@pytest.mark.parametrize("name", _model_params())
def test_convolutional_matches_the_built_network(name: str) -> None:
    model = build_model(MODELS[name], **CIFAR10)
    assert MODELS[name].convolutional == any(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("name", ["cnn-s", "mlp-800", "resnet8", "wrn-16-2"])
def test_a_record_builds_what_its_name_builds(name: str) -> None:
    torch.manual_seed(7)
    by_name = build_model(name, **CIFAR100)
    torch.manual_seed(7)
    by_record = build_model(MODELS[name], **CIFAR100)
    a, b = by_name.state_dict(), by_record.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _linear(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


OUTSIDE = ModelSpec(
    name="linear", builder=_linear, family="linear", convolutional=False,
    summary="a linear classifier on the flattened pixels", source="tests/test_models.py",
)  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 28, 28, 10), (3, 32, 32, 100)], ids=["1x28x28-10", "3x32x32-100"])
def test_a_record_made_outside_the_registry_builds(shape: tuple[int, int, int, int]) -> None:
    channels, height, width, classes = shape
    model = build_model(OUTSIDE, in_channels=channels, num_classes=classes, image_size=height)
    assert model(torch.randn(2, channels, height, width)).shape == (2, classes)
    assert count_parameters(model) == channels * height * width * classes + classes
    assert "linear" not in list_models()
    with pytest.raises(ConfigError, match="unknown model 'linear'"):
        build_model("linear", **MNIST)


def test_a_record_made_outside_the_registry_loads_weights_and_checks_sizes(tmp_path: Path) -> None:
    source = build_model(OUTSIDE, **MNIST)
    path = tmp_path / "linear.pt"
    torch.save(source.state_dict(), path)
    assert _same_outputs(source, build_model(OUTSIDE, **MNIST, pretrained=path))
    with pytest.raises(ConfigError, match="image_size must be a positive integer"):
        build_model(OUTSIDE, in_channels=1, num_classes=10, image_size=0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "non-empty string without blanks"),
        ({"name": "my net"}, "non-empty string without blanks"),
        ({"builder": "cnn_s"}, "builder must be callable"),
        ({"family": ""}, "family must not be empty"),
    ],
)
def test_a_record_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(OUTSIDE, **fields)


def test_unknown_name_through_get_model_spec() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9'; choose one of: cnn-m, cnn-s, .*wrn-40-2$"):
        get_model_spec("resnet9")


def test_importing_the_registry_does_not_import_torchvision() -> None:
    code = "import sys, kdbench.models; kdbench.models.list_models(); print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# load_state_dict_file
# --------------------------------------------------------------------------------------------------


def _same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...] = (4, 1, 28, 28)) -> bool:
    a.eval()
    b.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def _trained_cnn_s() -> nn.Module:
    """A cnn-s whose batch-norm statistics are no longer the defaults."""
    torch.manual_seed(0)
    model = build_model("cnn-s", **MNIST)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 28, 28) * 3 + 1)
    return model


def test_round_trip(tmp_path: Path) -> None:
    source = _trained_cnn_s()
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    target = build_model("cnn-s", **MNIST)
    assert not _same_outputs(source, target)
    load_state_dict_file(target, str(path))
    assert _same_outputs(source, target)


def test_build_model_pretrained(tmp_path: Path) -> None:
    source = _trained_cnn_s()
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    assert _same_outputs(source, build_model("cnn-s", **MNIST, pretrained=path))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict(tmp_path: Path, wrapper: str) -> None:
    source = _trained_cnn_s()
    path = tmp_path / "ckpt.pt"
    torch.save({wrapper: source.state_dict(), "epoch": 3, "best_acc": 0.91}, path)
    target = build_model("cnn-s", **MNIST)
    load_state_dict_file(target, path)
    assert _same_outputs(source, target)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_prefixes_are_stripped(tmp_path: Path, prefix: str) -> None:
    source = _trained_cnn_s()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in source.state_dict().items()}}, path)
    target = build_model("cnn-s", **MNIST)
    load_state_dict_file(target, path)
    assert _same_outputs(source, target)


class _NotAStateDict:
    def __init__(self) -> None:
        self.weights = torch.zeros(3)


@pytest.mark.parametrize(
    "payload", [pytest.param("module", id="whole-module"), pytest.param("custom", id="custom")]
)
def test_pickled_objects_are_refused(tmp_path: Path, payload: str) -> None:
    obj: object = build_model("cnn-s", **MNIST) if payload == "module" else _NotAStateDict()
    path = tmp_path / "pickled.pt"
    torch.save(obj, path)
    with pytest.raises(
        CheckpointError, match=r"is not a plain weights file \(torch.load weights_only=True"
    ) as info:
        load_state_dict_file(build_model("cnn-s", **MNIST), path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_not_a_dict_of_tensors(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        load_state_dict_file(build_model("cnn-s", **MNIST), path)
    torch.save({"fc.weight": torch.zeros(2), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match=r"not a dict of tensors.*'note'"):
        load_state_dict_file(build_model("cnn-s", **MNIST), path)


def test_wrong_class_count_names_both_counts(tmp_path: Path) -> None:
    path = tmp_path / "c100.pt"
    torch.save(build_model("resnet8", **CIFAR100).state_dict(), path)
    with pytest.raises(CheckpointError, match="checkpoint has 100 classes, the dataset has 10") as info:
        load_state_dict_file(build_model("resnet8", **CIFAR10), path)
    assert "\n" not in str(info.value)


def test_wrong_architecture_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "r14.pt"
    torch.save(build_model("resnet14", **CIFAR10).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys layer1\.1\.") as info:
        load_state_dict_file(build_model("resnet8", **CIFAR10), path)
    assert "\n" not in str(info.value)


def test_wrong_input_channels_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "rgb.pt"
    torch.save(build_model("resnet8", **CIFAR10).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"wrong shape \(conv1\.weight"):
        load_state_dict_file(build_model("resnet8", **MNIST), path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_state_dict_file(build_model("cnn-s", **MNIST), path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"this is not a checkpoint at all", b"garbage", b""])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(build_model("cnn-s", **MNIST), path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)
    assert "weights_only=True refused" not in str(info.value)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pt"
    torch.save(build_model("cnn-s", **MNIST).state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        load_state_dict_file(build_model("cnn-s", **MNIST), path)
    assert "\n" not in str(info.value)
