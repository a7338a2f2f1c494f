"""The model registry: one :class:`ModelSpec` record per network kdbench can build, and the one way to build it.

Each record holds everything kdbench knows about a model: its name, its builder (from
:mod:`kdbench.models.architectures`), its family, whether it is convolutional, a one-line summary and the
paper or code it follows. :func:`list_models` names them, :func:`get_model_spec` finds one by name, and
:func:`build_model` checks the sizes, builds, and loads an optional local weights file
(:func:`kdbench.models.checkpoints.load_state_dict_file`). :func:`build_model` also takes a record made
outside the zoo, so a network from anywhere builds the same way.

Adding a zoo model is one :class:`ModelSpec` in ``_ZOO`` below, in this file, and nothing else: the
name table, :func:`list_models` and the error messages all read ``_ZOO``. A network that no builder
makes yet needs its builder in :mod:`kdbench.models.architectures` first. Records are listed
explicitly; nothing registers itself on import, and importing this module does not import torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from kdbench.errors import ConfigError
from kdbench.models.architectures import (
    Builder,
    cifar_resnet,
    cnn_m,
    cnn_s,
    mlp_800,
    mlp_1200,
    torchvision_resnet,
    wide_resnet,
)
from kdbench.models.checkpoints import load_state_dict_file

__all__ = ["MODELS", "ModelSpec", "build_model", "count_parameters", "get_model_spec", "list_models"]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything kdbench knows about one model: how to build it and what it is.

    A record need not come from the zoo: ``build_model(ModelSpec(...), ...)`` builds any network
    written this way.

    Attributes:
        name: the name a study writes, e.g. ``"resnet8x4"``; no blanks. Zoo names have no ``:`` (that
            form is kept for names resolved outside the zoo, such as an import path).
        builder: ``builder(in_channels=, num_classes=, image_size=)`` returns a fresh model, in training
            mode, on the CPU, whose forward maps ``(batch, in_channels, image_size, image_size)`` images to
            ``(batch, num_classes)`` logits.
        family: the kind of network: ``"mlp"``, ``"cnn"``, ``"resnet"``, ``"wide-resnet"``, ...
        convolutional: whether the network has 2-d convolutions (``False`` for the MLPs).
        summary: one line saying what the network is, with its parameter count for 10 classes (and, for the
            MLPs, whose first layer depends on it, 1x28x28 images).
        source: the paper, and the code it follows where there is one.
    """

    name: str
    builder: Builder
    family: str
    convolutional: bool
    summary: str
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"ModelSpec name must be a non-empty string without blanks, got {self.name!r}")
        if not callable(self.builder):
            raise ValueError(f"ModelSpec {self.name!r}: builder must be callable, got {self.builder!r}")
        if not self.family:
            raise ValueError(f"ModelSpec {self.name!r}: family must not be empty")


_KDBENCH = "kdbench's own, sized to train in minutes on a laptop CPU"
_HINTON = "Hinton, Vinyals & Dean, 'Distilling the Knowledge in a Neural Network' (2015), MNIST experiments"
_REPDISTILLER = (
    "He et al., 'Deep Residual Learning for Image Recognition' (CVPR 2016), CIFAR ResNet; as in RepDistiller "
    "(Tian, Krishnan & Isola, 'Contrastive Representation Distillation', ICLR 2020), models/resnet.py"
)
_WRN = (
    "Zagoruyko & Komodakis, 'Wide Residual Networks' (BMVC 2016); as in RepDistiller "
    "(Tian, Krishnan & Isola, ICLR 2020), models/wrn.py"
)
_TORCHVISION = (
    "He et al., 'Deep Residual Learning for Image Recognition' (CVPR 2016); "
    "torchvision.models.{arch}(weights=None), with the CIFAR stem for images of at most 64 pixels"
)
_SMALL = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]


def _cifar_resnet(name: str, depth: int, filters: list[int], summary: str) -> ModelSpec:
    return ModelSpec(name=name, builder=cifar_resnet(depth, filters), family="resnet", convolutional=True,
                     summary=summary, source=_REPDISTILLER)


def _torchvision_resnet(arch: str, summary: str) -> ModelSpec:
    return ModelSpec(name=arch, builder=torchvision_resnet(arch), family="resnet", convolutional=True,
                     summary=summary, source=_TORCHVISION.format(arch=arch))


_ZOO: tuple[ModelSpec, ...] = (
    ModelSpec(name="cnn-s", builder=cnn_s, family="cnn", convolutional=True, source=_KDBENCH,
              summary="student CNN: 3x3 conv blocks of 16/32/32 channels, global average pool, linear (15k)"),
    ModelSpec(name="cnn-m", builder=cnn_m, family="cnn", convolutional=True, source=_KDBENCH,
              summary="teacher CNN: 3x3 conv blocks of 32/64/128 channels, max-pooled to 3x3, 1152-512 MLP (0.69M)"),
    ModelSpec(name="mlp-800", builder=mlp_800, family="mlp", convolutional=False, source=_HINTON,
              summary="Hinton et al.'s student: 2 x 800 ReLU units, no regularisation (1.3M on 1x28x28)"),
    ModelSpec(name="mlp-1200", builder=mlp_1200, family="mlp", convolutional=False, source=_HINTON,
              summary="Hinton et al.'s teacher: 2 x 1200 ReLU units, dropout 0.2 (2.4M on 1x28x28)"),
    _cifar_resnet("resnet8", 8, _SMALL, "CIFAR ResNet-8: 1 BasicBlock per stage, 16/32/64 channels (0.08M)"),
    _cifar_resnet("resnet14", 14, _SMALL, "CIFAR ResNet-14: 2 BasicBlocks per stage, 16/32/64 channels (0.17M)"),
    _cifar_resnet("resnet20", 20, _SMALL, "CIFAR ResNet-20: 3 BasicBlocks per stage, 16/32/64 channels (0.27M)"),
    _cifar_resnet("resnet32", 32, _SMALL, "CIFAR ResNet-32: 5 BasicBlocks per stage, 16/32/64 channels (0.47M)"),
    _cifar_resnet("resnet44", 44, _SMALL, "CIFAR ResNet-44: 7 BasicBlocks per stage, 16/32/64 channels (0.66M)"),
    _cifar_resnet("resnet56", 56, _SMALL, "CIFAR ResNet-56: 9 BasicBlocks per stage, 16/32/64 channels (0.86M)"),
    _cifar_resnet("resnet110", 110, _SMALL, "CIFAR ResNet-110: 18 BasicBlocks per stage, 16/32/64 channels (1.7M)"),
    _cifar_resnet("resnet8x4", 8, _X4, "CIFAR ResNet-8, 4x wide: 1 BasicBlock per stage, 64/128/256 channels (1.2M)"),
    _cifar_resnet("resnet32x4", 32, _X4, "CIFAR ResNet-32, 4x wide: 5 BasicBlocks per stage, 64/128/256 (7.4M)"),
    ModelSpec(name="wrn-16-2", builder=wide_resnet(16, 2), family="wide-resnet", convolutional=True, source=_WRN,
              summary="WRN-16-2: 2 pre-activation blocks per stage, 32/64/128 channels, no dropout (0.69M)"),
    ModelSpec(name="wrn-40-2", builder=wide_resnet(40, 2), family="wide-resnet", convolutional=True, source=_WRN,
              summary="WRN-40-2: 6 pre-activation blocks per stage, 32/64/128 channels, no dropout (2.2M)"),
    _torchvision_resnet("resnet18", "ImageNet ResNet-18: BasicBlocks 2-2-2-2, 64 to 512 channels (11M)"),
    _torchvision_resnet("resnet34", "ImageNet ResNet-34: BasicBlocks 3-4-6-3, 64 to 512 channels (21M)"),
    _torchvision_resnet("resnet50", "ImageNet ResNet-50: Bottlenecks 3-4-6-3, 64 to 2048 channels (23.5M)"),
)


def _by_name(records: tuple[ModelSpec, ...]) -> Mapping[str, ModelSpec]:
    table: dict[str, ModelSpec] = {}
    for record in records:
        if record.name in table or ":" in record.name:
            raise ValueError(f"zoo model name {record.name!r} is taken twice or has a ':'")
        table[record.name] = record
    return MappingProxyType(table)


MODELS: Mapping[str, ModelSpec] = _by_name(_ZOO)
"""Every zoo model, read-only: name -> :class:`ModelSpec`, in the zoo's order."""


def list_models() -> list[str]:
    """Return the names of the zoo's models, in the zoo's order (small networks first, by family).

    Returns:
        A new list of the keys of :data:`MODELS`, e.g. ``["cnn-s", "cnn-m", "mlp-800", ...]``.
    """
    return list(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    """Return the record of the zoo model called ``name``.

    Args:
        name: a name of :func:`list_models`, e.g. ``"resnet8x4"``.

    Returns:
        Its :class:`ModelSpec`.

    Raises:
        ConfigError: no zoo model has that name (the message lists the names).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(
    name: str | ModelSpec,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    pretrained: str | Path | None = None,
    weights: str | None = None,
    model_args: dict[str, Any] | None = None,
    folder: Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    input_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build the model ``name`` for images of ``in_channels x image_size x image_size``.

    Args:
        name: a name of :func:`list_models`, e.g. ``"resnet8x4"``, or a :class:`ModelSpec` (from the zoo
            or not) to build.
        in_channels: channels of the input images (1 for the MNIST family, 3 for CIFAR).
        num_classes: size of the logit vector the model returns.
        image_size: height (= width) of the input images in pixels.
        pretrained: optional path of a local state-dict file to load into the new model.
        weights: for a model from outside the zoo (a name with ``:``, see :mod:`kdbench.models.sources`): its
            library weights.
        model_args: for a model from outside the zoo: its keyword arguments.
        folder: for a model from outside the zoo: the study file's folder (where a relative path starts).
        input_shape: for data that are not images (features, token ids), the shape of one input
            (``DatasetInfo.input_shape``); only your own models (an import path) take it, called with
            ``input_shape=`` when their signature has it and checked on a ``[2, *input_shape]`` batch.
        input_dtype: for data that are not images, the dtype of one input.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ConfigError: ``name`` is not registered, or a size is not a positive integer.
        CheckpointError: ``pretrained`` cannot be loaded into the model.
    """
    if isinstance(name, ModelSpec):
        spec = name
    elif ":" in name:
        from kdbench.models.sources import resolve_model  # torchvision, timm or the user's code: only when asked

        spec = resolve_model(name, weights=weights, model_args=model_args, folder=folder)
    else:
        spec = get_model_spec(name)
    if input_shape is not None:
        if spec.family in ("torchvision", "timm") or ":" not in spec.name:
            raise ConfigError(
                f"model {spec.name!r} takes images, but the data are inputs of shape {tuple(input_shape)}; "
                "give your own model for them as path/to/file.py:Class or package.module:factory")
        model = spec.builder(in_channels=0, num_classes=num_classes, image_size=0, input_shape=tuple(input_shape),
                             input_dtype=input_dtype)
        if pretrained is not None:
            load_state_dict_file(model, pretrained)
        return model
    for field, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    model = spec.builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if pretrained is not None:
        load_state_dict_file(model, pretrained)
    return model


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters (``requires_grad``) of ``model``.

    Args:
        model: any module.

    Returns:
        The sum of ``numel()`` over the parameters that require a gradient.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
