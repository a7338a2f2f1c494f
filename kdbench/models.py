"""The networks kdbench trains and distils between, and how checkpoints are loaded into them.

Every model is built by name from :data:`MODELS` for a dataset's ``in_channels``, ``num_classes`` and
``image_size`` and returns raw logits of shape ``(batch, num_classes)``:

* ``cnn-s`` / ``cnn-m``: a tiny student CNN (~15k parameters) and a teacher-sized CNN (~0.7M) that
  train in minutes on a laptop CPU (MNIST family, CIFAR).
* ``mlp-800`` / ``mlp-1200``: the two-hidden-layer MLPs of Hinton, Vinyals & Dean (2015): the
  unregularised 800-unit student and the dropout-regularised 1200-unit teacher.
* ``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``, ``wrn-16-2``, ``wrn-40-2``: the CIFAR
  networks of RepDistiller (Tian, Krishnan & Isola, "Contrastive Representation Distillation", 2020),
  with the same widths, depths and initialisation, so parameter counts match its tables.
* ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's ImageNet ResNets, with the usual CIFAR
  stem (3x3 stride-1 conv, no max-pool) for images of at most 64 pixels.

All of them end in global pooling (or, for the MLPs, a flatten of the whole image), so any image size
from 16 pixels up works. Weights come only from local files (:func:`load_state_dict_file`); nothing is
downloaded.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from kdbench.errors import CheckpointError, ConfigError

__all__ = [
    "MODELS",
    "CifarResNet",
    "WideResNet",
    "build_model",
    "count_parameters",
    "has_batchnorm",
    "load_state_dict_file",
]


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


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
    """Return the number of trainable parameters (``requires_grad``) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_batchnorm(model: nn.Module) -> bool:
    """Return whether ``model`` contains a batch-norm layer (whose statistics depend on train/eval mode)."""
    # _BatchNorm is the common base of BatchNorm1d/2d/3d, their Lazy variants and SyncBatchNorm.
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load the weights in ``path`` into ``model``, in place, with strict key and shape checks.

    The file is read with ``torch.load(weights_only=True)``, so it may hold only tensors and plain
    containers, never pickled code. Accepted layouts: a state dict, or a dict wrapping one under
    ``"state_dict"`` or ``"model"`` (the usual training-checkpoint layouts). Key prefixes added by
    ``DataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.

    Args:
        model: the freshly built model to fill.
        path: the weights file.

    Raises:
        CheckpointError: the file is missing or unreadable, is not a plain weights file, or its
            keys or shapes do not match ``model`` (e.g. it was trained for another number of classes).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler raises UnpicklingError both for objects it will not rebuild
        # (a pickled nn.Module, a custom class: "Unsupported global") and for bytes that are no pickle.
        if not any(marker in str(exc) for marker in _WEIGHTS_ONLY_REFUSALS):
            raise CheckpointError(
                f"checkpoint file {path} is not a torch.save file ({_first_line(exc)}); "
                "save it with torch.save(model.state_dict(), path)"
            ) from exc
        raise CheckpointError(
            f"checkpoint file {path} is not a plain weights file (torch.load weights_only=True refused it): "
            "save model.state_dict()"
        ) from exc
    except Exception as exc:  # a damaged file can fail deep inside the unpickler with any error
        raise CheckpointError(
            f"checkpoint file {path} cannot be read ({_first_line(exc)}); "
            "it may be truncated: save it again with torch.save(model.state_dict(), path)"
        ) from exc

    state = _unwrap_state_dict(obj, path)
    _check_compatible(model, state, path)
    model.load_state_dict(state, strict=True)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for embedding it in a one-line error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


_WEIGHTS_ONLY_REFUSALS = ("Unsupported global", "can still be loaded")
_WRAPPER_KEYS = ("state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and strip ``DataParallel``/``compile`` key prefixes."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint file {path} holds a {type(obj).__name__}, not a dict of tensors; "
            "save model.state_dict()"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint file {path} is not a dict of tensors (entry {key!r} is a "
                f"{type(value).__name__}); save model.state_dict()"
            )
        state[_strip_prefixes(key)] = value
    return state


def _strip_prefixes(key: str) -> str:
    """Remove any leading ``module.`` / ``_orig_mod.`` (in any order or number) from a state-dict key."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise a one-line CheckpointError if ``state`` cannot be loaded strictly into ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(
            f"checkpoint file {path} does not match the model ({'; '.join(parts)}); "
            "use a checkpoint saved from the same model architecture"
        )

    classifier = _classifier_weight_key(model)
    if classifier is not None and state[classifier].shape != expected[classifier].shape:
        have, want = state[classifier].shape[0], expected[classifier].shape[0]
        raise CheckpointError(
            f"cannot load checkpoint file {path}: the checkpoint has {have} classes, the dataset has {want}; "
            "use a checkpoint trained on this dataset"
        )

    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3])
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise CheckpointError(
            f"checkpoint file {path} has tensors of the wrong shape ({details}{more}; checkpoint vs model); "
            "use a checkpoint of the same model built for the same in_channels"
        )


def _few(keys: list[str], limit: int = 3) -> str:
    """Up to ``limit`` keys, and how many were left out."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _classifier_weight_key(model: nn.Module) -> str | None:
    """The state-dict key of the weight of the last ``nn.Linear`` in ``model`` (its classifier)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return None if last is None else f"{last}.weight"


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


def _cnn_s(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
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


def _cnn_m(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
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


def _mlp_800(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Hinton et al.'s student: 2 x 800 ReLU units, no regularisation (the paper's "small net")."""
    return _mlp(in_channels * image_size * image_size, 800, num_classes, dropout=0.0)


def _mlp_1200(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
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
        self.layer1 = self._stage(num_filters[0], num_filters[1], n, stride=1)
        self.layer2 = self._stage(num_filters[1], num_filters[2], n, stride=2)
        self.layer3 = self._stage(num_filters[2], num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3], num_classes)
        _kaiming_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_BasicBlock(in_planes, planes, stride)]
        layers += [_BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(depth: int, num_filters: list[int]) -> Callable[..., nn.Module]:
    """A registry builder for ``CifarResNet(depth, num_filters)``."""

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        del image_size  # global pooling: any size works
        return CifarResNet(depth, num_filters, in_channels, num_classes)

    build.__doc__ = f"RepDistiller's CIFAR ResNet of depth {depth} with filters {num_filters}."
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
        self.block1 = self._stage(widths[0], widths[1], n, stride=1)
        self.block2 = self._stage(widths[1], widths[2], n, stride=2)
        self.block3 = self._stage(widths[2], widths[3], n, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _kaiming_init(self)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_WideBlock(in_planes, planes, stride)]
        layers += [_WideBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _wide_resnet(depth: int, widen: int) -> Callable[..., nn.Module]:
    """A registry builder for ``WideResNet(depth, widen)``."""

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        del image_size  # global pooling: any size works
        return WideResNet(depth, widen, in_channels, num_classes)

    build.__doc__ = f"RepDistiller's WRN-{depth}-{widen} (no dropout)."
    return build


# --------------------------------------------------------------------------------------------------
# torchvision ImageNet ResNets, adapted to small images
# --------------------------------------------------------------------------------------------------

_SMALL_IMAGE_MAX = 64  # at most this many pixels: CIFAR stem (3x3 stride-1 conv, no max-pool)


def _torchvision_resnet(arch: str) -> Callable[..., nn.Module]:
    """A registry builder for ``torchvision.models.<arch>(weights=None)`` with a stem for the input size.

    For images of at most 64 pixels the 7x7 stride-2 conv and the max-pool (which would shrink a 32x32
    image to 8x8 before the first block) become a 3x3 stride-1 conv and ``Identity``, the standard CIFAR
    adaptation. Larger images keep the ImageNet stem, rebuilt for ``in_channels``.
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


# --------------------------------------------------------------------------------------------------
# The registry: name -> builder(in_channels, num_classes, image_size)
# --------------------------------------------------------------------------------------------------

_SMALL = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn-s": _cnn_s,
    "cnn-m": _cnn_m,
    "mlp-800": _mlp_800,
    "mlp-1200": _mlp_1200,
    "resnet8": _cifar_resnet(8, _SMALL),
    "resnet14": _cifar_resnet(14, _SMALL),
    "resnet20": _cifar_resnet(20, _SMALL),
    "resnet32": _cifar_resnet(32, _SMALL),
    "resnet44": _cifar_resnet(44, _SMALL),
    "resnet56": _cifar_resnet(56, _SMALL),
    "resnet110": _cifar_resnet(110, _SMALL),
    "resnet8x4": _cifar_resnet(8, _X4),
    "resnet32x4": _cifar_resnet(32, _X4),
    "wrn-16-2": _wide_resnet(16, 2),
    "wrn-40-2": _wide_resnet(40, 2),
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet34": _torchvision_resnet("resnet34"),
    "resnet50": _torchvision_resnet("resnet50"),
}
"""Every model kdbench can build: name -> ``builder(in_channels=, num_classes=, image_size=)``."""
