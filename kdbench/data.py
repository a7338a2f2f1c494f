"""Datasets as whole uint8 tensors on one device, with the splits, normalisation and augmentation.

A dataset is read once into memory as ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels and moved
to the training device in one piece; batches are then slices of those tensors, normalised and augmented
on the device (:func:`normalize`, :func:`augment`) without a DataLoader or any per-sample Python work.

Where the files are looked for (:func:`search_roots`, first hit wins): the study's ``data.root``, then
``$KDBENCH_DATA``, then ``./data``, then ``/usr/share/datasets`` (where ``apt-get install -y
dataset-fashion-mnist`` puts Fashion-MNIST). Under each root:

* ``fashion-mnist``: ``fashion-mnist/``, ``FashionMNIST/raw/`` (torchvision's layout) or the root itself,
  holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` files, gzipped or not;
* ``mnist``: the same files in ``mnist/`` or ``MNIST/raw/``;
* ``cifar10`` / ``cifar100``: torchvision's ``cifar-10-batches-py/`` / ``cifar-100-python/`` pickles;
* ``imagefolder``: no search; ``data.root`` is the folder itself, with ``train/<class>/*.png`` (and
  optionally ``test/<class>/...``).

With ``download=True`` and nothing found, torchvision downloads the dataset into the first search root,
in the layout above, and it is read from there.

Splits (:func:`load_data`): the validation set is a stratified, seeded carve-out of the official training
set; ``subset`` then takes a stratified sample of what is left; the official test set is never touched.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

from kdbench.errors import ConfigError, DataNotFoundError

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "SYSTEM_DATA_ROOT",
    "Data",
    "DatasetInfo",
    "Split",
    "augment",
    "load_data",
    "load_raw",
    "normalize",
    "search_roots",
    "stratified_split",
]


# --------------------------------------------------------------------------------------------------
# What a dataset is
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
        name: the key in :data:`DATASETS`.
        channels: 1 (grayscale) or 3 (RGB).
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        image_size: side of the square images in pixels, as loaded.
        mean: per-channel mean of the ``[0, 1]``-scaled training pixels.
        std: per-channel standard deviation of the ``[0, 1]``-scaled training pixels.
        classes: class names, indexed by label.
    """

    name: str
    channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"DatasetInfo {self.name!r}: mean and std need one value per channel")
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"DatasetInfo {self.name!r}: {len(self.classes)} class names for {self.num_classes}"
            )


# fmt: off
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
    "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)
# fmt: on

DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 10, 28, (0.2860,), (0.3530,), _FASHION_CLASSES),
    "mnist": DatasetInfo("mnist", 1, 10, 28, (0.1307,), (0.3081,), tuple(str(d) for d in range(10))),
    "cifar10": DatasetInfo(
        "cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _CIFAR10_CLASSES
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR100_CLASSES
    ),
    # A placeholder: the real info (classes, channels, size, mean/std) is built from the folder at load time.
    "imagefolder": DatasetInfo("imagefolder", 3, 0, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ()),
}


@dataclass(repr=False, eq=False)
class Split:
    """One split of a dataset as two tensors on the same device.

    Attributes:
        images: ``uint8 [N, C, H, W]``, contiguous.
        labels: ``int64 [N]``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.dim() != 1 or len(self.images) != len(self.labels):
            raise ValueError(
                f"Split needs images [N, C, H, W] and labels [N], got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, images={tuple(self.images.shape)}, device={self.images.device})"

    def to(self, device: str | torch.device) -> Split:
        """Return this split with both tensors on ``device`` (no copy if they are already there)."""
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, indices: torch.Tensor) -> Split:
        """Return the rows ``indices`` (a CPU or same-device int64 tensor) as a new contiguous split."""
        idx = indices.to(self.images.device)
        return Split(self.images.index_select(0, idx), self.labels.index_select(0, idx))


@dataclass(repr=False, eq=False)
class Data:
    """A dataset ready for training: train / val / test splits on one device.

    Attributes:
        info: the dataset's facts (for ``imagefolder``, built from the folder).
        train: the rows the model trains on, after the validation carve-out and ``subset``.
        val: the stratified validation carve-out of the official training set (may be empty).
        test: the official test set; only ever evaluated.
        train_indices: int64 CPU indices of the ``train`` rows in the official training set.
        root: the search root the files were found under (for ``imagefolder``, the folder itself).
    """

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    train_indices: torch.Tensor
    root: Path | None

    @property
    def device(self) -> torch.device:
        """The device all three splits live on."""
        return self.train.images.device

    def __repr__(self) -> str:
        return (
            f"Data({self.info.name}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"device={self.device}, root={self.root})"
        )


def _empty_split(like: Split) -> Split:
    return Split(like.images[:0].clone(), like.labels[:0].clone())


# --------------------------------------------------------------------------------------------------
# Where the files are
# --------------------------------------------------------------------------------------------------

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
"""Where the distribution's ``dataset-*`` packages install datasets; the last place searched."""

_IDX_DIRS = {
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "."),
    "mnist": ("mnist", "MNIST/raw"),
}
_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}


def search_roots(root: str | Path | None) -> list[Path]:
    """The places a dataset is looked for, in order; the first that holds it wins.

    Args:
        root: the study's ``data.root`` (``None`` when unset).

    Returns:
        ``root`` (if given), ``$KDBENCH_DATA`` (if set), ``./data`` and :data:`SYSTEM_DATA_ROOT`, as
        absolute paths, without duplicates. They need not exist.
    """
    candidates: list[Path] = []
    if root is not None and str(root) != "":
        candidates.append(Path(root).expanduser())
    env = os.environ.get("KDBENCH_DATA", "")
    if env:
        candidates.append(Path(env).expanduser())
    candidates += [Path("data"), SYSTEM_DATA_ROOT]
    out: list[Path] = []
    for path in candidates:
        path = path.absolute()
        if path not in out:
            out.append(path)
    return out


def _canonical_name(dataset: str) -> str:
    name = dataset.strip().lower().replace("_", "-")
    if name not in DATASETS:
        raise ConfigError(f"data.dataset {dataset!r} is unknown; use one of: {', '.join(DATASETS)}")
    return name


# --------------------------------------------------------------------------------------------------
# Reading the official training and test sets
# --------------------------------------------------------------------------------------------------


def load_raw(
    dataset: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> tuple[DatasetInfo, Split, Split, Path | None]:
    """Read a dataset's official training and test sets into CPU tensors.

    Args:
        dataset: a key of :data:`DATASETS` (case and ``_``/``-`` do not matter).
        root: the study's ``data.root``, searched first; for ``imagefolder``, the folder itself (required).
        download: if nothing is found, let torchvision download it into the first search root.
        image_size: resize the images to this square side once, here (bilinear, antialiased); ``None``
            keeps the native size (``imagefolder``: 32).

    Returns:
        ``(info, train, test, root_found)``: ``info.image_size`` is the size as loaded; ``root_found`` is
        the search root the files were under (for ``imagefolder``, the folder itself).

    Raises:
        ConfigError: unknown dataset, bad ``image_size``, or a file that is not in the expected format.
        DataNotFoundError: the files are in none of the searched places (the message lists them).
    """
    name = _canonical_name(dataset)
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
        raise ConfigError(f"data.image_size must be a positive integer, got {image_size!r}")
    if name == "imagefolder":
        return _load_imagefolder(root, 32 if image_size is None else int(image_size))

    roots = search_roots(root)
    found = _find(name, roots)
    if found is None and download:
        _download(name, roots[0])
        found = _find(name, roots[:1])
    if found is None:
        raise _not_found(name, roots, download)
    search_root, directory = found
    info, train, test = (
        _read_idx_dataset(name, directory) if name in _IDX_DIRS else _read_cifar(name, directory)
    )
    if image_size is not None and int(image_size) != info.image_size:
        info = replace(info, image_size=int(image_size))
        train = Split(_resize(train.images, info.image_size), train.labels)
        test = Split(_resize(test.images, info.image_size), test.labels)
    return info, train, test, search_root


def _find(name: str, roots: list[Path]) -> tuple[Path, Path] | None:
    """The first ``(search root, directory)`` that holds the whole dataset."""
    for search_root in roots:
        for directory in _candidate_dirs(name, search_root):
            if not _missing_files(name, directory):
                return search_root, directory
    return None


def _candidate_dirs(name: str, search_root: Path) -> list[Path]:
    if name in _IDX_DIRS:
        return [search_root / sub if sub != "." else search_root for sub in _IDX_DIRS[name]]
    return [search_root / _CIFAR_DIRS[name]]


_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = {
    "cifar10": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"),
    "cifar100": ("train", "test"),
}


def _expected_files(name: str) -> tuple[str, ...]:
    return _IDX_STEMS if name in _IDX_DIRS else _CIFAR_FILES[name]


def _missing_files(name: str, directory: Path) -> list[str]:
    if name in _IDX_DIRS:
        return [s for s in _IDX_STEMS if _idx_file(directory, s) is None]
    return [f for f in _CIFAR_FILES[name] if not (directory / f).is_file()]


def _idx_file(directory: Path, stem: str) -> Path | None:
    """The plain file if present (faster to read), else the gzipped one."""
    for path in (directory / stem, directory / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _not_found(name: str, roots: list[Path], download: bool) -> DataNotFoundError:
    places = []
    for search_root in roots:
        for directory in _candidate_dirs(name, search_root):
            missing = _missing_files(name, directory)
            partial = directory.is_dir() and 0 < len(missing) < len(_expected_files(name))
            places.append(f"{directory} (missing {', '.join(missing)})" if partial else str(directory))
    ways = []
    if name in _APT_PACKAGES:
        ways.append(f"install it with `apt-get install -y {_APT_PACKAGES[name]}`")
    ways.append("put the files under one of those roots or set $KDBENCH_DATA to where they are")
    if not download:
        ways.append("allow downloading with `data.download: true`")
    else:
        ways.append("check the network (download was allowed but left nothing usable)")
    return DataNotFoundError(
        f"{name} not found; looked in: {'; '.join(places)}; to fix, {', or '.join(ways)}"
    )


def _download(name: str, root: Path) -> None:
    """Let torchvision fetch the dataset into ``root`` in the layout :func:`_find` knows."""
    import torchvision.datasets as tvd  # imported here: slow to import and only needed to download

    classes = {
        "fashion-mnist": tvd.FashionMNIST,
        "mnist": tvd.MNIST,
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
    }
    try:
        root.mkdir(parents=True, exist_ok=True)
        classes[name](root=str(root), train=True, download=True)
    except Exception as exc:  # network, disk, checksum: all end the same way for the user
        detail = " ".join(str(exc).split())
        raise DataNotFoundError(
            f"{name} could not be downloaded into {root} ({type(exc).__name__}: {detail}); "
            "put the files there by hand or set $KDBENCH_DATA to where they are"
        ) from exc


# IDX (MNIST, Fashion-MNIST): magic = 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes,
# then the data, big-endian, row-major. See http://yann.lecun.com/exdb/mnist/.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> npt.NDArray[Any]:
    """Parse one IDX file (gzipped or not, told by its first bytes) into a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ConfigError(f"{path} is a damaged gzip file ({exc}); download it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); download it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    expected = header + math.prod(dims) * dtype.itemsize
    if len(dims) != ndim or len(raw) != expected:
        raise ConfigError(
            f"{path} has {len(raw)} bytes but its IDX header says shape {dims} ({expected} bytes); "
            "the file is truncated or damaged, download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _read_idx_dataset(name: str, directory: Path) -> tuple[DatasetInfo, Split, Split]:
    info = DATASETS[name]
    splits = []
    for prefix in ("train", "t10k"):
        images_path = _idx_file(directory, f"{prefix}-images-idx3-ubyte")
        labels_path = _idx_file(directory, f"{prefix}-labels-idx1-ubyte")
        assert images_path is not None and labels_path is not None  # _find checked
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


def _to_split(images: npt.NDArray[Any], labels: npt.NDArray[Any], source: Path, num_classes: int) -> Split:
    """Wrap numpy arrays as a Split (copied: the buffers may be read-only), checking the labels."""
    if len(images) != len(labels):
        raise ConfigError(f"{source}: {len(images)} images but {len(labels)} labels; the files do not match")
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if len(labels_t) and (int(labels_t.min()) < 0 or int(labels_t.max()) >= num_classes):
        raise ConfigError(
            f"{source} has labels outside 0..{num_classes - 1}; check that it is the right dataset"
        )
    return Split(torch.from_numpy(np.ascontiguousarray(images).copy()), labels_t)


# CIFAR (torchvision's "python version"): each batch is a pickled dict with b"data" uint8 [N, 3072]
# (1024 red, then green, then blue, each row-major 32x32) and b"labels" / b"fine_labels".
def _read_cifar(name: str, directory: Path) -> tuple[DatasetInfo, Split, Split]:
    info = DATASETS[name]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    *train_files, test_file = _CIFAR_FILES[name]
    parts = [_read_cifar_batch(directory / f, label_key) for f in train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(directory / test_file, label_key)
    meta_file, names_key = (
        ("batches.meta", "label_names") if name == "cifar10" else ("meta", "fine_label_names")
    )
    if (directory / meta_file).is_file():
        names = _unpickle(directory / meta_file).get(names_key)
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


# imagefolder: <root>/train/<class>/<image>, optionally <root>/test/<class>/<image>.
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_IMAGEFOLDER_TEST_FRACTION = 0.2
_IMAGEFOLDER_TEST_SEED = 0  # fixed: the carved-out test set must not change with the run's seed


def _load_imagefolder(root: str | Path | None, size: int) -> tuple[DatasetInfo, Split, Split, Path | None]:
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
        test_idx, train_idx = stratified_split(labels, _IMAGEFOLDER_TEST_FRACTION, _IMAGEFOLDER_TEST_SEED)
        train, test = all_rows.take(train_idx), all_rows.take(test_idx)

    pixels = train.images.to(torch.float64).div_(255)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = [max(s, 1 / 255) for s in pixels.std(dim=(0, 2, 3), unbiased=False).tolist()]
    info = DatasetInfo(
        "imagefolder", 1 if gray else 3, len(classes), size, tuple(mean), tuple(std), tuple(classes)
    )
    return info, train, test, folder


def _to_chw(array: npt.NDArray[np.uint8], gray: bool) -> npt.NDArray[np.uint8]:
    """``[H, W]`` or ``[H, W, 3]`` to ``[C, H, W]``: 1 channel if the whole folder is gray, else 3."""
    if array.ndim == 3:
        return array.transpose(2, 0, 1)
    return array[None] if gray else np.repeat(array[None], 3, axis=0)


def _list_images(split_dir: Path, classes: list[str], folder: Path) -> list[tuple[Path, int]]:
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


def _resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 ``[N, C, H, W]`` images to ``size x size`` (bilinear, antialiased), in chunks."""
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.float32)
        resized = F.interpolate(
            block, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


# --------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------


def stratified_split(
    labels: torch.Tensor, fraction_or_count: float | int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split row indices into a stratified sample and the rest.

    Each class contributes in proportion to its size (largest-remainder rounding, so the total is exact);
    within a class the rows are chosen by a permutation seeded with ``seed``.

    Args:
        labels: ``[N]`` class indices ``>= 0`` (any device; the work is done on the CPU).
        fraction_or_count: a float in ``[0, 1]`` (fraction of the rows, rounded to the nearest count) or
            an int in ``[0, N]`` (exact number of rows).
        seed: the seed of the permutation; the same seed and labels give the same split.

    Returns:
        ``(taken, rest)``: disjoint, ascending int64 CPU index tensors that together cover ``0 .. N-1``.

    Raises:
        ConfigError: ``fraction_or_count`` is out of range or not a number.
    """
    y = labels.detach().to("cpu", torch.int64).reshape(-1).numpy()
    n = len(y)
    if isinstance(fraction_or_count, bool) or not isinstance(fraction_or_count, (int, float)):
        raise ConfigError(f"split size must be a fraction in [0, 1] or a count, got {fraction_or_count!r}")
    if isinstance(fraction_or_count, int):
        k = fraction_or_count
        if not 0 <= k <= n:
            raise ConfigError(
                f"split count {k} is outside 0..{n} (the number of rows); choose a count in range"
            )
    else:
        if not 0.0 <= fraction_or_count <= 1.0:  # also rejects NaN
            raise ConfigError(
                f"split fraction {fraction_or_count!r} is outside [0, 1]; choose a fraction in range"
            )
        k = math.floor(fraction_or_count * n + 0.5)
    if k == 0:
        return torch.empty(0, dtype=torch.int64), torch.arange(n)
    if int(y.min()) < 0:
        raise ConfigError("stratified_split needs class indices >= 0 as labels; map the labels to 0..K-1")

    # numpy, single-threaded: torch's sorts on a busy machine cost 100x more for no gain at this size.
    counts = np.bincount(y)
    quota = _largest_remainder(counts, k)
    perm = np.random.default_rng(int(seed)).permutation(n)
    grouped = perm[np.argsort(y[perm], kind="stable")]  # class by class, random order within each
    group_of = y[grouped]
    starts = np.cumsum(counts) - counts
    rank_in_class = np.arange(n) - starts[group_of]
    taken = np.zeros(n, dtype=bool)
    taken[grouped[rank_in_class < quota[group_of]]] = True
    return torch.from_numpy(np.flatnonzero(taken)), torch.from_numpy(np.flatnonzero(~taken))


def _largest_remainder(counts: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
    """Integer quotas proportional to ``counts`` summing to ``k`` (ties go to the earlier class)."""
    n = int(counts.sum())
    scaled = counts * k
    quota = scaled // n
    short = k - int(quota.sum())
    if short:
        order = np.argsort(-(scaled % n), kind="stable")
        quota[order[:short]] += 1
    return quota


# --------------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------------


def load_data(
    dataset: str = "fashion-mnist",
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = False,
    image_size: int | None = None,
) -> Data:
    """Load a dataset, carve out a validation set, optionally subsample, and move it all to ``device``.

    Args:
        dataset: a key of :data:`DATASETS`.
        root: the study's ``data.root`` (see :func:`search_roots`; for ``imagefolder``, the folder).
        val_fraction: fraction of the official training set held out, stratified, as ``val``; in
            ``[0, 1)``, ``0`` gives an empty ``val``.
        subset: if set, train on this many rows, a stratified sample of what is left after ``val``.
        seed: seeds both the validation carve-out and the subset.
        device: where the three splits are put.
        download: let torchvision download the dataset if it is not found.
        image_size: resize once at load time (see :func:`load_raw`).

    Returns:
        The splits, the dataset info, the official-set indices of ``train`` and the root found.

    Raises:
        ConfigError: an argument is out of range (the message names the ``data.*`` field).
        DataNotFoundError: the dataset is not found (and not downloaded).
    """
    if isinstance(val_fraction, bool) or not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
    info, official_train, test, found = load_raw(dataset, root=root, download=download, image_size=image_size)

    val_idx, train_idx = stratified_split(official_train.labels, float(val_fraction), seed)
    if subset is not None:
        if isinstance(subset, bool) or int(subset) != subset:
            raise ConfigError(f"data.subset must be an integer number of training rows, got {subset!r}")
        if subset > len(train_idx):
            raise ConfigError(
                f"data.subset={subset} is more than the {len(train_idx)} training rows left after the "
                "validation carve-out; lower data.subset or data.val_fraction"
            )
        if subset < info.num_classes:
            raise ConfigError(
                f"data.subset={subset} is fewer than the {info.num_classes} classes; "
                f"use at least {info.num_classes}"
            )
        chosen, _ = stratified_split(official_train.labels[train_idx], int(subset), seed)
        train_idx = train_idx[chosen]
    if len(train_idx) == 0:
        raise ConfigError(f"data.val_fraction={val_fraction} leaves no training rows; lower it")

    return Data(
        info=info,
        train=official_train.take(train_idx).to(device),
        val=official_train.take(val_idx).to(device),
        test=test.to(device),
        train_indices=train_idx,
        root=found,
    )


# --------------------------------------------------------------------------------------------------
# Per-batch transforms, on the device
# --------------------------------------------------------------------------------------------------


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

    Raises:
        ValueError: the input is not uint8 or has the wrong number of channels.
    """
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
_CROP_PAD = 4


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
        out = _random_crop(out, _CROP_PAD, generator)
    if "flip" in kind:
        out = _random_flip(out, generator)
    return out


def _random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
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
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
