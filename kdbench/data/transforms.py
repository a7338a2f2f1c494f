"""Per-batch transforms, on the device: normalisation and random augmentation of ``uint8`` batches.

A batch is a slice of a split's ``uint8 [N, C, H, W]`` images, already on the training device;
:func:`augment` shuffles its pixels around (crop, flip) and :func:`normalize` turns it into the floating
input of a model, both as a few whole-batch tensor operations, without a per-sample Python loop.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kdbench.data.catalog import DatasetInfo
from kdbench.defaults import CROP_PAD
from kdbench.errors import ConfigError

__all__ = ["AUGMENTS", "augment", "normalize"]


def normalize(
    images_uint8: torch.Tensor, info: DatasetInfo, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(images / 255 - mean) / std`` per channel, on the images' device.

    Args:
        images_uint8: ``uint8 [N, C, H, W]`` (or ``[C, H, W]``) with ``C == info.channels``.
        info: supplies the per-channel mean and std.
        dtype: a floating dtype for the result; the arithmetic is done in float32 (float64 if asked).

    Returns:
        A new tensor of the same shape and ``dtype``.

    Inputs that are not images (``info.input_shape`` set: features, token ids) are returned as they are,
    floating ones cast to ``dtype``, integer ones (token ids) unchanged.

    Raises:
        ValueError: the input is not uint8 or has the wrong number of channels.
    """
    if not info.is_image:
        return images_uint8.to(dtype) if images_uint8.is_floating_point() else images_uint8
    if images_uint8.dtype != torch.uint8:
        raise ValueError(
            f"normalize expects uint8 images, got {images_uint8.dtype}; normalise only raw pixels"
        )
    if images_uint8.dim() < 3 or images_uint8.shape[-3] != info.channels:
        raise ValueError(
            f"normalize: images of shape {tuple(images_uint8.shape)} do not have {info.channels} channel(s) "
            f"at dim -3 as {info.name} needs"
        )
    if not dtype.is_floating_point:
        raise ValueError(f"normalize: dtype must be a floating type, got {dtype}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    mean, std = _channel_stats(info.mean, info.std, images_uint8.device, compute)
    out = images_uint8.to(compute).div_(255).sub_(mean).div_(std)
    return out.to(dtype)


@functools.lru_cache(maxsize=32)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as ``[C, 1, 1]`` tensors, built once per device (no host-to-device copy per batch)."""
    return (
        torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
        torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1),
    )


AUGMENTS: tuple[str, ...] = ("none", "flip", "crop", "crop+flip")


def augment(images_uint8: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Randomly augment a batch, all on its device, without a per-sample loop.

    ``"crop"`` zero-pads each image by 4 pixels on every side and takes a random crop of the original
    size (each of the 9 x 9 offsets equally likely); ``"flip"`` mirrors each image left-right with
    probability 0.5; ``"crop+flip"`` crops, then flips. ``"none"`` returns the input itself.

    Args:
        images_uint8: ``uint8 [N, C, H, W]``.
        kind: one of :data:`AUGMENTS`.
        generator: the source of randomness, on the same device type as the images; the same generator
            state gives the same output.

    Returns:
        A ``uint8 [N, C, H, W]`` tensor on the same device.

    Raises:
        ConfigError: ``kind`` is unknown.
        ValueError: the images are not a uint8 batch, or the generator is on another device.
    """
    if kind not in AUGMENTS:
        raise ConfigError(f"augment {kind!r} is unknown; use one of: {', '.join(AUGMENTS)}")
    if kind == "none":
        return images_uint8
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(
            f"augment expects uint8 [N, C, H, W], got {images_uint8.dtype} {tuple(images_uint8.shape)}"
        )
    if generator.device.type != images_uint8.device.type:
        raise ValueError(
            f"augment: the generator is on {generator.device} but the images are on {images_uint8.device}; "
            "create the generator with torch.Generator(device=images.device)"
        )
    out = images_uint8
    if "crop" in kind:
        out = _random_crop(out, CROP_PAD, generator)
    if "flip" in kind:
        out = _random_flip(out, generator)
    return out


def _random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` pixels per side, then cut each image back to its size at a random offset."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    rows = (
        (offsets[0, :, None] + torch.arange(h, device=device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    )
    cols = (offsets[1, :, None] + torch.arange(w, device=device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def _random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5."""
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
