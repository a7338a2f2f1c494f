"""The model registry: every network kdbench can build, by name, and the one way to build it.

:data:`MODELS` maps a name to a builder of :mod:`kdbench.models.architectures`; :func:`build_model`
checks the name and the sizes, builds, and loads an optional local weights file
(:func:`kdbench.models.checkpoints.load_state_dict_file`).
"""

from __future__ import annotations

from pathlib import Path

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

__all__ = ["MODELS", "build_model", "count_parameters"]

_SMALL = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]

MODELS: dict[str, Builder] = {
    "cnn-s": cnn_s,
    "cnn-m": cnn_m,
    "mlp-800": mlp_800,
    "mlp-1200": mlp_1200,
    "resnet8": cifar_resnet(8, _SMALL),
    "resnet14": cifar_resnet(14, _SMALL),
    "resnet20": cifar_resnet(20, _SMALL),
    "resnet32": cifar_resnet(32, _SMALL),
    "resnet44": cifar_resnet(44, _SMALL),
    "resnet56": cifar_resnet(56, _SMALL),
    "resnet110": cifar_resnet(110, _SMALL),
    "resnet8x4": cifar_resnet(8, _X4),
    "resnet32x4": cifar_resnet(32, _X4),
    "wrn-16-2": wide_resnet(16, 2),
    "wrn-40-2": wide_resnet(40, 2),
    "resnet18": torchvision_resnet("resnet18"),
    "resnet34": torchvision_resnet("resnet34"),
    "resnet50": torchvision_resnet("resnet50"),
}
"""Every model kdbench can build: name -> ``builder(in_channels=, num_classes=, image_size=)``."""


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    pretrained: str | Path | None = None,
) -> nn.Module:
    """Build the model registered as ``name`` for images of ``in_channels x image_size x image_size``.

    Args:
        name: a key of :data:`MODELS`, e.g. ``"resnet8x4"``.
        in_channels: channels of the input images (1 for the MNIST family, 3 for CIFAR).
        num_classes: size of the logit vector the model returns.
        image_size: height (= width) of the input images in pixels.
        pretrained: optional path of a local state-dict file to load into the new model.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ConfigError: ``name`` is not registered, or a size is not a positive integer.
        CheckpointError: ``pretrained`` cannot be loaded into the model.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    for field, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    model = MODELS[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size)
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
