"""How much memory a dataset takes once loaded, and the refusal when it would not fit.

A loaded dataset is ``uint8 [N, C, S, S]`` images: ``N * C * S * S`` bytes, plus ``N * 8`` bytes of int64
labels, plus the teacher's cached logits, ``N * classes * 4`` bytes (float32) for each cached view. The images
are made on the host (read, then resized once) and moved to the training device in one piece; each place
asks :func:`check_fits` before it allocates, so a size that cannot fit is one line, not an out-of-memory kill.
"""

from __future__ import annotations

import torch

from kdbench.errors import ConfigError

__all__ = ["available_bytes", "check_fits", "dataset_bytes"]


def dataset_bytes(n: int, channels: int, size: int, num_classes: int = 0, views: int = 1,
                  input_bytes: int | None = None) -> int:
    """Bytes that ``n`` images of ``channels x size x size`` take as uint8, with their int64 labels and
    the teacher's float32 logits (``views`` of them per image; ``num_classes`` 0 leaves the logits out);
    ``input_bytes`` replaces ``channels x size x size`` for inputs that are not images."""
    per = channels * size * size if input_bytes is None else input_bytes
    return n * (per + 8 + views * num_classes * 4)


def available_bytes(device: str | torch.device) -> int | None:
    """Memory free on ``device``: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of ``/proc/meminfo``
    on the CPU; ``None`` where it cannot be told (another device, no ``/proc``)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(n: int, channels: int, size: int, device: str | torch.device, *, num_classes: int = 0,
               what: str = "the data", input_bytes: int | None = None) -> None:
    """Refuse, in one line naming ``data.image_size``, data that would not fit in ``device``'s free memory.

    Args:
        n: images (training and test together).
        channels: channels per image.
        size: side of the square images in pixels.
        device: where they are to be put.
        num_classes: adds the teacher's float32 logits when given.
        what: how the message names the data.
        input_bytes: bytes of one input that is not an image (features, token ids); then the refusal names
            fewer rows, there being no image size to lower.

    Raises:
        ConfigError: the estimate is more than the free memory.
    """
    need = dataset_bytes(n, channels, size, num_classes, input_bytes=input_bytes)
    free = available_bytes(device)
    if free is not None and need > free and input_bytes is not None:
        raise ConfigError(
            f"data.path: {what}, {n:,} inputs of {input_bytes:,} bytes each, need {_gib(need)} but "
            f"{torch.device(device)} has {_gib(free)} free; use fewer rows or a smaller input per row"
        )
    if free is not None and need > free:
        raise ConfigError(
            f"data.image_size: {what}, {n:,} images of {channels}x{size}x{size} as uint8, need {_gib(need)} but "
            f"{torch.device(device)} has {_gib(free)} free; set a smaller data.image_size, or use fewer rows "
            "(a smaller file; data.subset thins only the students' rows, the teacher trains on all)"
        )


def _gib(b: int) -> str:
    return f"{b / 2**30:.1f} GiB"
