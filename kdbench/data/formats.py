"""The on-disk formats: which files make up a dataset, and how each format is read into CPU tensors.

Three formats, each read into a :class:`~kdbench.data.catalog.Split` of ``uint8 [N, C, H, W]`` images
and ``int64 [N]`` labels for the official training set and one for the test set:

* IDX (MNIST, Fashion-MNIST): ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, gzipped or not;
* CIFAR (torchvision's "python version"): pickled batches of flat ``3 x 32 x 32`` rows;
* imagefolder: ``<root>/train/<class>/<image>`` (and optionally ``<root>/test/<class>/<image>``), in any
  format PIL reads; the classes, channels and normalisation statistics come from the folder.

Where the files are is not this module's business (see :mod:`kdbench.data.files`): it reads a directory
it is given, and says which of a dataset's files a directory lacks (:func:`missing_files`). Every damaged
or foreign file is a :class:`~kdbench.errors.ConfigError` that names the file.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from kdbench.data.catalog import DatasetInfo, DatasetSpec, Split
from kdbench.data.split import stratified_split
from kdbench.defaults import IMAGEFOLDER_TEST_FRACTION
from kdbench.errors import ConfigError, DataNotFoundError

__all__ = ["FORMATS", "expected_files", "load_imagefolder", "missing_files", "read_dataset"]

def expected_files(spec: DatasetSpec) -> tuple[str, ...]:
    """The files a dataset in IDX or CIFAR format consists of (its record's ``files``; IDX without ``.gz``)."""
    return spec.files


def missing_files(spec: DatasetSpec, directory: Path) -> list[str]:
    """Which of the dataset's files ``directory`` lacks (empty when it holds the whole dataset).

    Args:
        spec: the dataset's record (a format other than ``imagefolder``).
        directory: the directory to look in; it need not exist.

    Returns:
        The missing names, in the order of :func:`expected_files`.
    """
    if spec.format == "idx":
        return [s for s in spec.files if _idx_file(directory, s) is None]
    return [f for f in spec.files if not (directory / f).is_file()]


def read_dataset(spec: DatasetSpec, directory: Path) -> tuple[DatasetInfo, Split, Split]:
    """Read an IDX or CIFAR dataset's official training and test sets from ``directory``.

    Args:
        spec: the dataset's record; its ``format`` picks the reader in :data:`FORMATS`.
        directory: a directory that holds all of :func:`expected_files` (see :func:`missing_files`).

    Returns:
        ``(info, train, test)`` as CPU tensors at the native size; for CIFAR, ``info.classes`` are the
        names in the dataset's meta file when it has one.

    Raises:
        ConfigError: a file is damaged or does not hold this dataset.
    """
    return FORMATS[spec.format](spec, directory)


def _to_split(images: npt.NDArray[Any], labels: npt.NDArray[Any], source: Path, num_classes: int) -> Split:
    """Wrap numpy arrays as a Split (copied: the buffers may be read-only), checking the labels."""
    if len(images) != len(labels):
        raise ConfigError(f"{source}: {len(images)} images but {len(labels)} labels; the files do not match")
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if len(labels_t) and (int(labels_t.min()) < 0 or int(labels_t.max()) >= num_classes):
        raise ConfigError(
            f"{source} has labels outside 0..{num_classes - 1}; check that it is the right dataset"
        )
    images = np.ascontiguousarray(images)
    return Split(torch.from_numpy(images if images.flags.writeable else images.copy()), labels_t)


# --------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST): magic = 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes,
# then the data, big-endian, row-major. See http://yann.lecun.com/exdb/mnist/.
# --------------------------------------------------------------------------------------------------

# The numpy dtype of each IDX dtype code (the third byte of the magic number); all big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_file(directory: Path, stem: str) -> Path | None:
    """The plain file if present (faster to read), else the gzipped one."""
    for path in (directory / stem, directory / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _read_idx_dataset(spec: DatasetSpec, directory: Path) -> tuple[DatasetInfo, Split, Split]:
    info, name = spec.info, spec.name
    splits = []
    for images_stem, labels_stem in (spec.files[0:2], spec.files[2:4]):  # train, then test
        images_path = _idx_file(directory, images_stem)
        labels_path = _idx_file(directory, labels_stem)
        assert images_path is not None and labels_path is not None  # the caller checked missing_files
        images, labels = _read_idx(images_path), _read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ConfigError(
                f"{images_path} holds {images.dtype} {images.shape}, not uint8 [N, H, W] images"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ConfigError(f"{labels_path} holds {labels.dtype} {labels.shape}, not uint8 [N] labels")
        if images.shape[1] != info.image_size or images.shape[2] != info.image_size:
            raise ConfigError(
                f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, but {name} is "
                f"{info.image_size}x{info.image_size}; check that the file is {name}'s"
            )
        splits.append(_to_split(images[:, None], labels, labels_path, info.num_classes))
    return info, splits[0], splits[1]


def _read_idx(path: Path) -> npt.NDArray[Any]:
    """Parse one IDX file (gzipped or not, told by its first bytes) into a writable numpy array.

    The data are decompressed straight into the array (no whole-file buffer beside it), which keeps a
    worker's peak memory near the dataset's own size.
    """
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise ConfigError(f"{path} is not an IDX file (bad magic number {magic.hex()}); download it again")
            ndim = magic[3]
            head = f.read(4 * ndim)
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            dims = struct.unpack(f">{ndim}I", head) if len(head) == 4 * ndim else ()
            out = np.empty(dims if len(dims) == ndim else 0, dtype=dtype)
            got = f.readinto(out.data.cast("B")) if len(dims) == ndim and out.nbytes else 0
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"{path} is a damaged gzip file ({exc}); download it again") from exc
    expected = 4 + 4 * ndim + math.prod(dims) * dtype.itemsize
    if len(dims) != ndim or got != out.nbytes or extra:
        size = 4 + len(head) + got + extra
        raise ConfigError(
            f"{path} has {size}{'+' if extra else ''} bytes but its IDX header says shape {dims} ({expected} "
            "bytes); the file is truncated or damaged, download it again"
        )
    return out


# --------------------------------------------------------------------------------------------------
# CIFAR (torchvision's "python version"): each batch is a pickled dict with b"data" uint8 [N, 3072]
# (1024 red, then green, then blue, each row-major 32x32) and b"labels" / b"fine_labels".
# --------------------------------------------------------------------------------------------------


def _read_cifar(spec: DatasetSpec, directory: Path) -> tuple[DatasetInfo, Split, Split]:
    info, label_key = spec.info, spec.label_key
    *train_files, test_file = spec.files
    parts = [_read_cifar_batch(directory / f, label_key) for f in train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(directory / test_file, label_key)
    if spec.names is not None and (directory / spec.names[0]).is_file():
        names = _unpickle(directory / spec.names[0]).get(spec.names[1])
        if names is not None and len(names) == info.num_classes:
            info = replace(info, classes=tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names))
    train = _to_split(train_x, train_y, directory / train_files[0], info.num_classes)
    test = _to_split(test_x, test_y, directory / test_file, info.num_classes)
    return info, train, test


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle (the official format; only open files you trust) with its keys as ``str``."""
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise ConfigError(f"{path} cannot be unpickled ({type(exc).__name__}); download it again") from exc
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} is not a CIFAR batch (a pickled dict); download it again")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_cifar_batch(path: Path, label_key: str) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    batch = _unpickle(path)
    if "data" not in batch or label_key not in batch:
        raise ConfigError(
            f"{path} has no {label_key!r} or 'data' entry; it is not a CIFAR batch of this dataset"
        )
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"{path}: 'data' has shape {data.shape}, expected [N, 3072]; download it again")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[label_key], dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# imagefolder: <root>/train/<class>/<image>, optionally <root>/test/<class>/<image>.
# --------------------------------------------------------------------------------------------------

# File name endings (lower-cased) that count as images; other files in a class folder are passed over.
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
# PIL image modes read as one gray channel; every other mode is converted to RGB.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_IMAGEFOLDER_TEST_SEED = 0  # fixed: the carved-out test set must not change with the run's seed


def load_imagefolder(root: str | Path | None, size: int) -> tuple[DatasetInfo, Split, Split, Path | None]:
    """Read an image folder into training and test sets, building its :class:`DatasetInfo` from it.

    The classes are the sorted sub-folders of ``train/``. Without a ``test/`` folder, a stratified 20 %
    of ``train/`` (always with seed 0) is the test set. The images are gray (one channel) if all of them
    are, else RGB; the mean and std are those of the training images.

    Args:
        root: the folder that holds ``train/`` (and optionally ``test/``); the study's ``data.root``.
        size: the side in pixels every image is squashed to (bilinear).

    Returns:
        ``(info, train, test, folder)``, ``folder`` being ``root`` as an absolute path.

    Raises:
        ConfigError: ``root`` is unset, there are fewer than 2 classes, a class has no images, ``test/``
            has a class ``train/`` lacks, or an image cannot be read.
        DataNotFoundError: ``root`` has no ``train/`` folder.
    """
    if root is None or str(root) == "":
        raise ConfigError("data.root must be set for imagefolder: the folder that holds train/ (and test/)")
    folder = Path(root).expanduser().absolute()
    train_dir = folder / "train"
    if not train_dir.is_dir():
        raise DataNotFoundError(
            f"imagefolder at {folder} has no train/ folder; put one sub-folder per class under {train_dir}"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ConfigError(
            f"imagefolder at {folder} has {len(classes)} {'class' if len(classes) == 1 else 'classes'}; "
            "it needs at least 2 sub-folders, one per class"
        )
    train_files = _list_images(train_dir, classes, folder)
    present = {label for _, label in train_files}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise ConfigError(
            f"imagefolder class folder {train_dir / empty[0]} holds no images; add some or remove it"
        )
    test_dir = folder / "test"
    test_files = _list_images(test_dir, classes, folder) if test_dir.is_dir() else []

    arrays = [_read_image(path, size) for path, _ in train_files + test_files]
    gray = all(a.ndim == 2 for a in arrays)
    stacked = np.stack([_to_chw(a, gray) for a in arrays])
    labels = torch.tensor([label for _, label in train_files + test_files], dtype=torch.int64)
    all_rows = Split(torch.from_numpy(stacked), labels)
    n_train = len(train_files)
    if test_files:
        train, test = all_rows.take(torch.arange(n_train)), all_rows.take(torch.arange(n_train, len(labels)))
    else:
        test_idx, train_idx = stratified_split(labels, IMAGEFOLDER_TEST_FRACTION, _IMAGEFOLDER_TEST_SEED)
        train, test = all_rows.take(train_idx), all_rows.take(test_idx)

    pixels = train.images.to(torch.float64).div_(255)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = [max(s, 1 / 255) for s in pixels.std(dim=(0, 2, 3), unbiased=False).tolist()]
    info = DatasetInfo(
        "imagefolder", 1 if gray else 3, len(classes), size, tuple(mean), tuple(std), tuple(classes)
    )
    return info, train, test, folder


def _list_images(split_dir: Path, classes: list[str], folder: Path) -> list[tuple[Path, int]]:
    """``(image file, label)`` for each image under ``split_dir/<class>/``, sorted by class, then name."""
    files = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in classes:
            raise ConfigError(
                f"imagefolder at {folder}: {class_dir} is a class that train/ does not have; "
                "add it to train/ or remove it"
            )
        label = classes.index(class_dir.name)
        files += [
            (p, label)
            for p in sorted(class_dir.iterdir())
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
        ]
    return files


def _read_image(path: Path, size: int) -> npt.NDArray[np.uint8]:
    """One image, squashed to ``size x size``: ``[H, W]`` if grayscale, else ``[H, W, 3]`` RGB."""
    from PIL import Image  # image folders only: a worker reading IDX or CIFAR files does not load PIL (~2 MiB)

    try:
        with Image.open(path) as img:
            img.load()
            converted = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
    except Exception as exc:  # PIL raises many types for damaged files
        raise ConfigError(
            f"imagefolder image {path} cannot be read ({type(exc).__name__}); replace or delete it"
        ) from exc
    resized = converted.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _to_chw(array: npt.NDArray[np.uint8], gray: bool) -> npt.NDArray[np.uint8]:
    """``[H, W]`` or ``[H, W, 3]`` to ``[C, H, W]``: 1 channel if the whole folder is gray, else 3."""
    if array.ndim == 3:
        return array.transpose(2, 0, 1)
    return array[None] if gray else np.repeat(array[None], 3, axis=0)


FORMATS: dict[str, Callable[[DatasetSpec, Path], tuple[DatasetInfo, Split, Split]]] = {
    "idx": _read_idx_dataset,
    "cifar": _read_cifar,
}
"""The reader of each on-disk format a :class:`~kdbench.data.catalog.DatasetSpec` names (``imagefolder``
is read from its folder by :func:`load_imagefolder`)."""
