"""The architectures of the model zoo: each a builder ``(in_channels, num_classes, image_size) -> nn.Module``.

:mod:`kdbench.models.zoo` registers them by name; the builders and the two network classes are public
so the registry (and anyone adding a model) can name them. Widths, depths and initialisations follow
the papers they come from, so parameter counts match the published tables. Every network ends in
global pooling (or, for the MLPs, a flatten of the whole image), so any image size from 16 pixels up
works. torchvision is imported only when one of its ResNets is built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "Builder",
    "CifarResNet",
    "WideResNet",
    "cifar_resnet",
    "cnn_m",
    "cnn_s",
    "mlp_800",
    "mlp_1200",
    "torchvision_resnet",
    "wide_resnet",
]

Builder = Callable[..., nn.Module]
"""A registry builder: ``builder(in_channels=, num_classes=, image_size=)`` returns a fresh model."""


# --------------------------------------------------------------------------------------------------
# Small CNNs for fast CPU experiments
# --------------------------------------------------------------------------------------------------


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A 3x3 same-padding convolution (no bias: the batch norm has one), batch norm and ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def cnn_s(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Three conv blocks of 16/32/32 channels, global average pool, linear (~14.5k params for 1x28x28)."""
    del image_size  # global pooling: any size works
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 16),
        nn.MaxPool2d(2),
        *_conv_bn_relu(16, 32),
        nn.MaxPool2d(2),
        *_conv_bn_relu(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


def cnn_m(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Three conv blocks of 32/64/128 channels pooled to 3x3, then a 1152-512-classes MLP (~0.69M params).

    The convolutions cost about 7.5M multiply-adds per 28x28 image, so an epoch of Fashion-MNIST takes
    about 80 s on two CPU cores. Three epochs of Adam (lr 2e-3, batch 128, cosine with 0.2 epochs of warm-up)
    reached 91.3% test (92.2% val); lr 1e-3 reached 90.8%, and at a constant lr the last epoch lands anywhere
    in 88-90% (the test accuracy still swings).
    """
    del image_size  # the adaptive pool makes the classifier input 128 x 3 x 3 for any size
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 32),
        nn.MaxPool2d(2),
        *_conv_bn_relu(32, 64),
        nn.MaxPool2d(2),
        *_conv_bn_relu(64, 128),
        nn.AdaptiveMaxPool2d(3),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(128 * 3 * 3, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.3),
        nn.Linear(512, num_classes),
    )


# --------------------------------------------------------------------------------------------------
# Hinton et al. (2015) MLPs
# --------------------------------------------------------------------------------------------------


def _mlp(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Module:
    """Flatten, two ReLU hidden layers of ``hidden`` units (each followed by dropout if > 0), linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(2):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def mlp_800(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Hinton et al.'s student: 2 x 800 ReLU units, no regularisation (the paper's "small net")."""
    return _mlp(in_channels * image_size * image_size, 800, num_classes, dropout=0.0)


def mlp_1200(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Hinton et al.'s teacher: 2 x 1200 ReLU units with dropout 0.2 after each hidden layer."""
    return _mlp(in_channels * image_size * image_size, 1200, num_classes, dropout=0.2)


# --------------------------------------------------------------------------------------------------
# RepDistiller's CIFAR ResNets (He et al. 2016, post-activation BasicBlock, depth = 6n + 2)
# --------------------------------------------------------------------------------------------------


def _kaiming_init(model: nn.Module) -> None:
    """RepDistiller's initialisation: He-normal (fan_out) convolutions, unit/zero batch norms."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _stage(
    block: Callable[[int, int, int], nn.Module], in_planes: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """``blocks`` residual blocks ``block(in, out, stride)``: the first maps ``in_planes`` to ``planes``."""
    layers = [block(in_planes, planes, stride)]
    layers += [block(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the (projected, if the shape changes) input, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """RepDistiller's ``ResNet``: a 3x3 stem, three stages of ``(depth - 2) / 6`` BasicBlocks, GAP, linear.

    ``num_filters`` is ``[stem, stage1, stage2, stage3]``: ``[16, 16, 32, 64]`` for resnet8..110 and
    ``[32, 64, 128, 256]`` for the "x4" variants. Stages 2 and 3 halve the resolution. Global average
    pooling replaces RepDistiller's fixed ``AvgPool2d(8)`` (same parameters; works for any image size).
    """

    def __init__(self, depth: int, num_filters: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(_BasicBlock, num_filters[0], num_filters[1], n, stride=1)
        self.layer2 = _stage(_BasicBlock, num_filters[1], num_filters[2], n, stride=2)
        self.layer3 = _stage(_BasicBlock, num_filters[2], num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3], num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(depth: int, num_filters: list[int]) -> Builder:
    """A registry builder for ``CifarResNet(depth, num_filters)``.

    Args:
        depth: 6n + 2 layers, e.g. 8 for resnet8.
        num_filters: ``[stem, stage1, stage2, stage3]`` channels.

    Returns:
        The builder; it ignores ``image_size`` (global pooling: any size works).
    """
    return _any_size(
        lambda in_channels, num_classes: CifarResNet(depth, num_filters, in_channels, num_classes),
        f"RepDistiller's CIFAR ResNet of depth {depth} with filters {num_filters}.",
    )


def _any_size(make: Callable[[int, int], nn.Module], doc: str) -> Builder:
    """A builder that calls ``make(in_channels, num_classes)`` for any image size, documented by ``doc``."""

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        del image_size  # global pooling: any size works
        return make(in_channels, num_classes)

    build.__doc__ = doc
    return build


# --------------------------------------------------------------------------------------------------
# RepDistiller's Wide ResNets (Zagoruyko & Komodakis 2016, pre-activation, depth = 6n + 4, no dropout)
# --------------------------------------------------------------------------------------------------


class _WideBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus the input (1x1-projected from the pre-activation on a shape change)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        # As in the reference code, a projecting block's shortcut starts from the pre-activation.
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: a 3x3 stem of 16, stages of 16k/32k/64k channels, BN-ReLU, GAP, linear."""

    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = _stage(_WideBlock, widths[0], widths[1], n, stride=1)
        self.block2 = _stage(_WideBlock, widths[1], widths[2], n, stride=2)
        self.block3 = _stage(_WideBlock, widths[2], widths[3], n, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _kaiming_init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wide_resnet(depth: int, widen: int) -> Builder:
    """A registry builder for ``WideResNet(depth, widen)``.

    Args:
        depth: 6n + 4 layers, e.g. 40 for wrn-40-2.
        widen: the widening factor k (stages of 16k/32k/64k channels).

    Returns:
        The builder; it ignores ``image_size`` (global pooling: any size works).
    """
    return _any_size(
        lambda in_channels, num_classes: WideResNet(depth, widen, in_channels, num_classes),
        f"RepDistiller's WRN-{depth}-{widen} (no dropout).",
    )


# --------------------------------------------------------------------------------------------------
# torchvision ImageNet ResNets, adapted to small images
# --------------------------------------------------------------------------------------------------

_SMALL_IMAGE_MAX = 64  # at most this many pixels: CIFAR stem (3x3 stride-1 conv, no max-pool)


def torchvision_resnet(arch: str) -> Builder:
    """A registry builder for ``torchvision.models.<arch>(weights=None)`` with a stem for the input size.

    For images of at most 64 pixels the 7x7 stride-2 conv and the max-pool (which would shrink a 32x32
    image to 8x8 before the first block) become a 3x3 stride-1 conv and ``Identity``, the standard CIFAR
    adaptation. Larger images keep the ImageNet stem, rebuilt for ``in_channels``.

    Args:
        arch: the name of a torchvision ResNet constructor, e.g. ``"resnet18"``.

    Returns:
        The builder; torchvision is imported when it first builds a model, not before.
    """

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        import torchvision.models  # here: it imports torch._dynamo (~2.5 s), which only these models need

        model: torchvision.models.ResNet = getattr(torchvision.models, arch)(
            weights=None, num_classes=num_classes
        )
        if image_size <= _SMALL_IMAGE_MAX:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # torchvision's own initialisation of its convolutions
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model

    build.__doc__ = f"torchvision's {arch} (random init), with a CIFAR stem for images <= 64 pixels."
    return build
