"""Data held in memory: the official training and test sets given as arrays (numpy, torch, or anything
``numpy.asarray`` reads) instead of files.

:func:`from_arrays` turns ``x_train, y_train, x_test, y_test`` into ``(info, train, test)``, what
:func:`~kdbench.data.load.load_raw` gives for a dataset on disk, so that an ``.npz`` file, a Hugging Face
data set, a torch ``Dataset`` or a notebook's arrays all become the same :class:`~kdbench.data.catalog.Data`
through :func:`~kdbench.data.load.split_data`.

Images follow Keras' convention: ``uint8 (N, H, W)`` (grayscale) or ``(N, H, W, C)`` with ``C`` in 1, 3;
``(N, C, H, W)`` (torch's layout) is accepted too when ``C`` is 1 or 3 and the last axis is not. The
normalisation statistics are the training pixels' per-channel mean and standard deviation.

Arrays that are not uint8 images (any other dtype, or uint8 of two axes) are other inputs, except four-axis arrays
laid out as images (1 or 3 channels), which are refused as images that are not uint8: floating ones are
features (kept as float32), integer ones token ids or codes (kept as int64), ``(N, ...)`` with the same
per-input shape in both sets. They are given to the model as they are (no normalisation, no augmentation:
scale features yourself) and train your own models only (``file.py:Class``); the :class:`DatasetInfo` holds
their ``input_shape``. :func:`resize_images` resizes once, at load, for every
source (``data.image_size``), after asking :func:`~kdbench.data.memory.check_fits` whether the result fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from kdbench.data.catalog import DatasetInfo, Split
from kdbench.data.memory import check_fits
from kdbench.errors import ConfigError

__all__ = ["from_arrays", "image_layout", "resize_images"]


def _is_images(x: npt.NDArray[Any], what: str) -> bool:
    """Whether ``x`` is uint8 images (else other inputs); refuses images that are not uint8 (one line)."""
    if x.dtype != np.uint8 and x.ndim == 4 and (x.shape[1] in (1, 3) or x.shape[-1] in (1, 3)):
        raise ConfigError(
            f"{what}: images must be uint8 (0-255), got {x.dtype} {x.shape}; scale them to 0-255 and cast "
            "(e.g. (x * 255).round().astype('uint8')), or give inputs that are not images as (N, features)"
        )
    return x.dtype == np.uint8 and x.ndim in (3, 4)


def _inputs(x: npt.NDArray[Any], what: str) -> npt.NDArray[Any]:
    """Non-image inputs as float32 (features) or int64 (token ids), ``(N, ...)``."""
    if x.ndim < 2:
        raise ConfigError(f"{what}: inputs of shape {x.shape}; give one row per sample, (N, features) or (N, ...)")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ConfigError(f"{what}: features hold NaN or infinite values; clean or impute them first")
        return np.ascontiguousarray(x, dtype=np.float32)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        return np.ascontiguousarray(x, dtype=np.int64)
    raise ConfigError(f"{what}: {x.dtype} inputs; give uint8 images, float features or integer token ids")


def image_layout(x: npt.NDArray[Any], what: str) -> npt.NDArray[np.uint8]:
    """``x`` as ``uint8 [N, C, H, W]`` (C-contiguous, a copy where it had to move axes).

    Args:
        x: ``uint8 (N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` in 1, 3.
        what: how the message names the array (e.g. ``"data.path x_train"``).

    Raises:
        ConfigError: not uint8, or a shape that is none of those (one line naming ``what`` and the shape).
    """
    if x.dtype != np.uint8:
        raise ConfigError(
            f"{what}: {x.dtype} {x.shape} is not uint8 images; kdbench trains on uint8 images (0-255) "
            "(N, H, W) or (N, H, W, C), not on features or token ids"
        )
    if x.ndim == 3:
        return np.ascontiguousarray(x[:, None])
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return np.ascontiguousarray(x)
    raise ConfigError(
        f"{what}: images of shape {x.shape}; give (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
    )


def resize_images(images: torch.Tensor, size: int, *, what: str = "the data", chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 ``[N, C, H, W]`` images to ``size x size`` (bilinear, antialiased), ``chunk`` at a time.

    Args:
        images: CPU ``uint8 [N, C, H, W]``.
        size: the new side in pixels.
        what: how a refusal names the data.
        chunk: images resized at once (bounds the float32 transient).

    Returns:
        A new CPU ``uint8 [N, C, size, size]`` tensor (``images`` itself when already that size).

    Raises:
        ConfigError: the result would not fit in the host's free memory (checked before allocating).
    """
    if tuple(images.shape[2:]) == (size, size):
        return images
    check_fits(len(images), int(images.shape[1]), size, "cpu", what=what)
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.float32)
        resized = F.interpolate(block, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _labels(y: Any, n: int, what: str) -> npt.NDArray[np.int64]:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"{what}: labels of shape {y.shape} for {n} inputs; give one integer label per input")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{what}: labels must be integers 0..classes-1, got {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise ConfigError(f"{what}: labels must be integers 0..classes-1, found {int(y.min())}")
    return y.astype(np.int64)


def from_arrays(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    name: str = "arrays",
    classes: Sequence[str] | None = None,
    source: str = "data",
    image_size: int | None = None,
) -> tuple[DatasetInfo, Split, Split]:
    """The official training and test sets from arrays, checked, as CPU tensors.

    Args:
        x_train: training images (see the module docstring for the layouts).
        y_train: integer labels ``0 .. classes - 1``, one per training image.
        x_test: test images of the same channels and size as ``x_train``.
        y_test: integer labels, one per test image.
        name: the :class:`DatasetInfo` name.
        classes: class names by label; default ``"0" .. str(classes - 1)``, the classes being one more than
            the largest label of either set.
        source: how a refusal names where the arrays came from (e.g. ``"data.path 'digits.npz'"``).
        image_size: resize both sets to this square side once, here (see :func:`resize_images`); ``None``
            keeps their size, which must then be square.

    Returns:
        ``(info, train, test)`` like :func:`~kdbench.data.load.load_raw` without its root.

    Raises:
        ConfigError: a bad array, labels that are not integers or out of range, train and test of
            different shapes, or test labels the training set never has (one line naming ``source``).
    """
    xtr_raw, xte_raw = np.asarray(x_train), np.asarray(x_test)
    images = _is_images(xtr_raw, f"{source} x_train")
    if images != _is_images(xte_raw, f"{source} x_test"):
        raise ConfigError(
            f"{source}: x_train is {xtr_raw.dtype} {xtr_raw.shape} but x_test is {xte_raw.dtype} {xte_raw.shape}; "
            "give both sets as uint8 images or both as features/token ids"
        )
    if images:
        xtr, xte = _image_sets(xtr_raw, xte_raw, source, image_size)
    else:
        if image_size is not None:
            raise ConfigError(f"data.image_size applies to images; {source} holds {xtr_raw.dtype} inputs "
                              f"{xtr_raw.shape[1:]}: remove data.image_size")
        xtr, xte = _inputs(xtr_raw, f"{source} x_train"), _inputs(xte_raw, f"{source} x_test")
        if xtr.shape[1:] != xte.shape[1:]:
            raise ConfigError(f"{source}: x_train inputs are {xtr.shape[1:]} but x_test inputs are "
                              f"{xte.shape[1:]}; give both sets the same shape per input")
    if len(xtr) == 0 or len(xte) == 0:
        raise ConfigError(f"{source}: the training and the test set both need at least one input")
    ytr = _labels(y_train, len(xtr), f"{source} y_train")
    yte = _labels(y_test, len(xte), f"{source} y_test")
    num_classes = len(classes) if classes is not None else int(max(ytr.max(), yte.max())) + 1
    for y, what in ((ytr, "y_train"), (yte, "y_test")):
        if int(y.max()) >= num_classes:
            raise ConfigError(
                f"{source} {what}: label {int(y.max())} is out of range for {num_classes} classes "
                f"({', '.join(classes or [])}); labels must be 0..{num_classes - 1}"
            )
    unseen = sorted(set(np.unique(yte).tolist()) - set(np.unique(ytr).tolist()))
    if unseen:
        raise ConfigError(
            f"{source}: y_test has label(s) {', '.join(map(str, unseen[:5]))} that y_train never has; train and "
            "test must hold the same classes"
        )
    if num_classes < 2:
        raise ConfigError(f"{source}: the labels hold {num_classes} class; a classifier needs at least 2")
    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(i) for i in range(num_classes))
    if images:
        pixels = torch.from_numpy(xtr).to(torch.float64).div_(255)
        mean = tuple(float(v) for v in pixels.mean(dim=(0, 2, 3)))
        std = tuple(max(float(v), 1e-6) for v in pixels.std(dim=(0, 2, 3)))
        info = DatasetInfo(name, int(xtr.shape[1]), num_classes, int(xtr.shape[2]), mean, std, names)
    else:
        info = DatasetInfo(name, 0, num_classes, 0, (), (), names, input_shape=tuple(int(d) for d in xtr.shape[1:]),
                           input_dtype=str(xtr.dtype))
    train = Split(torch.from_numpy(xtr), torch.from_numpy(ytr))
    return info, train, Split(torch.from_numpy(xte), torch.from_numpy(yte))


def _image_sets(x_train: npt.NDArray[Any], x_test: npt.NDArray[Any], source: str,
                image_size: int | None) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Both sets as ``uint8 [N, C, S, S]``, resized once to ``image_size`` if given."""
    xtr = image_layout(x_train, f"{source} x_train")
    xte = image_layout(x_test, f"{source} x_test")
    if xtr.shape[1] != xte.shape[1] or (image_size is None and xtr.shape[2:] != xte.shape[2:]):
        raise ConfigError(
            f"{source}: x_train images are {xtr.shape[1:]} (C, H, W) but x_test images are {xte.shape[1:]}; "
            "give both sets the same channels and size"
            + (" (data.image_size resizes both)" if xtr.shape[1] == xte.shape[1] else "")
        )
    if image_size is not None:
        check_fits(len(xtr) + len(xte), int(xtr.shape[1]), int(image_size), "cpu", what=source)
        xtr = resize_images(torch.from_numpy(xtr), int(image_size), what=source).numpy()
        xte = resize_images(torch.from_numpy(xte), int(image_size), what=source).numpy()
    if xtr.shape[2] != xtr.shape[3]:
        raise ConfigError(
            f"{source}: images are {xtr.shape[2]}x{xtr.shape[3]}; kdbench trains on square images, "
            "resize them (data.image_size) or crop them first"
        )
    return xtr, xte
