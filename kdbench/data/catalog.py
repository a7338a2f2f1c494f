"""What a dataset is: the known datasets' facts and the typed containers their tensors travel in.

:class:`DatasetInfo` holds a dataset's static facts (channels, classes, size, normalisation statistics);
:data:`DATASETS` lists the datasets kdbench knows, keyed by name, and :func:`canonical_name` maps what a
study writes to one of those keys. A loaded dataset is a :class:`Data`: three :class:`Split` s (train,
val, test), each a pair of ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels on one device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from kdbench.errors import ConfigError

__all__ = ["DATASETS", "Data", "DatasetInfo", "Split", "canonical_name", "fingerprint"]


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


def canonical_name(dataset: str) -> str:
    """The :data:`DATASETS` key that ``dataset`` names.

    Args:
        dataset: a dataset name as a study writes it; case, surrounding blanks and ``_``/``-`` do not matter.

    Returns:
        The key, e.g. ``"fashion-mnist"`` for ``"Fashion_MNIST"``.

    Raises:
        ConfigError: the name is not a known dataset (the message lists the known ones).
    """
    name = dataset.strip().lower().replace("_", "-")
    if name not in DATASETS:
        raise ConfigError(f"data.dataset {dataset!r} is unknown; use one of: {', '.join(DATASETS)}")
    return name


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
        fingerprint: SHA-256 (16 hex digits) of the official training and test images and labels as loaded:
            what the data are, whatever the files are called or wherever they lie (keys the teacher cache).
    """

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    train_indices: torch.Tensor
    root: Path | None
    fingerprint: str = ""

    @property
    def device(self) -> torch.device:
        """The device all three splits live on."""
        return self.train.images.device

    def __repr__(self) -> str:
        return (
            f"Data({self.info.name}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"device={self.device}, root={self.root})"
        )


def fingerprint(*splits: Split) -> str:
    """SHA-256 (16 hex digits) of the splits' images and labels, read in place (CPU tensors)."""
    h = hashlib.sha256()
    for split in splits:
        for t in (split.images, split.labels):
            t = t.contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().data)
    return h.hexdigest()[:16]
