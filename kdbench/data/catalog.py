"""What a dataset is: the known datasets' facts and the typed containers their tensors travel in.

:class:`DatasetInfo` holds a dataset's static facts (channels, classes, size, normalisation statistics);
:class:`DatasetSpec` is everything kdbench knows about one dataset (its info, format, files, where they
may lie, how to install or download them), one record per dataset in :data:`REGISTRY`: adding a dataset
in a known format is one :func:`register_dataset` call, here or in a user's code. :data:`DATASETS` maps
each name to its info and :func:`canonical_name` maps what a study writes to a key. A loaded dataset is
a :class:`Data`: three :class:`Split` s (train, val, test), each a pair of ``uint8 [N, C, H, W]`` images
and ``int64 [N]`` labels on one device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdbench.errors import ConfigError

__all__ = [
    "DATASETS",
    "REGISTRY",
    "Data",
    "DatasetInfo",
    "DatasetSpec",
    "Split",
    "canonical_name",
    "dataset_spec",
    "fingerprint",
    "register_dataset",
]


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
        input_shape: ``None`` for images; for other inputs (features, token ids: an ``.npz`` or arrays that
            are not uint8 images), the shape of one input, e.g. ``(64,)``; such data have no channels
            (``channels`` 0, ``image_size`` 0, no mean or std), are not normalised or augmented, and train
            your own models only.
        input_dtype: for those inputs, ``"float32"`` (features) or ``"int64"`` (token ids).
    """

    name: str
    channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"

    @property
    def model_shape(self) -> dict[str, Any]:
        """What :func:`kdbench.models.build_model` needs of the data, as its keyword arguments."""
        shape: dict[str, Any] = {"in_channels": self.channels, "num_classes": self.num_classes,
                                 "image_size": self.image_size}
        if self.input_shape is not None:
            shape |= {"input_shape": self.input_shape, "input_dtype": getattr(torch, self.input_dtype)}
        return shape

    def example_batch(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` random model inputs of this data's shape, as the model sees them after normalisation
        (standard normal; token ids: zeros), for timing or sizing a model."""
        if self.input_shape is None:
            return torch.randn(n, self.channels, self.image_size, self.image_size, device=device)
        if self.input_dtype == "int64":
            return torch.zeros((n, *self.input_shape), dtype=torch.int64, device=device)
        return torch.randn((n, *self.input_shape), device=device)

    @property
    def is_image(self) -> bool:
        """Whether the inputs are uint8 images ``[C, H, W]`` (else features or token ids, see ``input_shape``)."""
        return self.input_shape is None

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"DatasetInfo {self.name!r}: mean and std need one value per channel")
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"DatasetInfo {self.name!r}: {len(self.classes)} class names for {self.num_classes}"
            )


@dataclass(frozen=True)
class DatasetSpec:
    """Everything kdbench knows about one dataset: one record in :data:`REGISTRY`.

    Attributes:
        info: its static facts (what :data:`DATASETS` gives for its name).
        format: the on-disk format, a key of :data:`kdbench.data.formats.FORMATS` (``idx``, ``cifar``), or
            ``imagefolder``, ``npz``, ``hf`` (read from ``data.root`` / ``data.path``, their info built at load).
        files: the files a directory must hold for the dataset to be there (IDX: the stems, each also
            accepted gzipped; CIFAR: the training batches, then the test batch last).
        dirs: the directories under a search root it may sit in, in the order tried (``"."`` is the root).
        apt_package: the Debian package that installs it, if there is one (named in the not-found line).
        torchvision_class: the :mod:`torchvision.datasets` class that downloads it (``data.download``).
        label_key: CIFAR: the batches' label entry.
        names: CIFAR: the meta file and its entry that hold the class names, when the files carry them.
    """

    info: DatasetInfo
    format: str
    files: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()
    apt_package: str | None = None
    torchvision_class: str | None = None
    label_key: str = "labels"
    names: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        """The dataset's key."""
        return self.info.name


REGISTRY: dict[str, DatasetSpec] = {}
"""The datasets kdbench knows, one :class:`DatasetSpec` each, keyed by name; add one with :func:`register_dataset`."""


def register_dataset(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    """Add ``spec`` to :data:`REGISTRY` (from inside the package or from a user's code).

    Args:
        spec: the dataset's record; its name is written as a study writes it (lower case, ``-``).
        replace: allow replacing an entry of the same name.

    Returns:
        ``spec``.

    Raises:
        ValueError: the name is taken (and ``replace`` is false) or not in canonical spelling.
    """
    if spec.name != spec.name.strip().lower().replace("_", "-"):
        raise ValueError(f"dataset name {spec.name!r}: write it in lower case with '-', as a study would")
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"dataset {spec.name!r} is already registered; pass replace=True to replace it")
    REGISTRY[spec.name] = spec
    return spec


class _Infos(Mapping[str, DatasetInfo]):
    """:data:`DATASETS`: each registered dataset's :class:`DatasetInfo`, read from :data:`REGISTRY`."""

    def __getitem__(self, name: str) -> DatasetInfo:
        return REGISTRY[name].info

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


DATASETS: Mapping[str, DatasetInfo] = _Infos()
"""Each known dataset's :class:`DatasetInfo` by name (a view of :data:`REGISTRY`)."""


def canonical_name(dataset: str) -> str:
    """The :data:`REGISTRY` key that ``dataset`` names.

    Args:
        dataset: a dataset name as a study writes it; case, surrounding blanks and ``_``/``-`` do not matter.

    Returns:
        The key, e.g. ``"fashion-mnist"`` for ``"Fashion_MNIST"``.

    Raises:
        ConfigError: the name is not a known dataset (the message lists the known ones).
    """
    name = dataset.strip().lower().replace("_", "-")
    if name not in REGISTRY:
        raise ConfigError(
            f"data.dataset {dataset!r} is unknown; use one of: {', '.join(REGISTRY)}, or torchvision:NAME"
        )
    return name


def dataset_spec(dataset: str) -> DatasetSpec:
    """The record of the dataset ``dataset`` names (see :func:`canonical_name`)."""
    return REGISTRY[canonical_name(dataset)]


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
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# fmt: on

register_dataset(DatasetSpec(
    DatasetInfo("fashion-mnist", 1, 10, 28, (0.2860,), (0.3530,), _FASHION_CLASSES),
    "idx", _IDX_FILES, ("fashion-mnist", "FashionMNIST/raw", "."), "dataset-fashion-mnist", "FashionMNIST"))
register_dataset(DatasetSpec(
    DatasetInfo("mnist", 1, 10, 28, (0.1307,), (0.3081,), tuple(str(d) for d in range(10))),
    "idx", _IDX_FILES, ("mnist", "MNIST/raw"), None, "MNIST"))
register_dataset(DatasetSpec(
    DatasetInfo("cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _CIFAR10_CLASSES),
    "cifar", ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"),
    ("cifar-10-batches-py",), None, "CIFAR10", "labels", ("batches.meta", "label_names")))
register_dataset(DatasetSpec(
    DatasetInfo("cifar100", 3, 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR100_CLASSES),
    "cifar", ("train", "test"), ("cifar-100-python",), None, "CIFAR100", "fine_labels", ("meta", "fine_label_names")))
# Placeholders: the real info (classes, channels, size, mean/std) is built from the folder or file at load time.
register_dataset(DatasetSpec(DatasetInfo("imagefolder", 3, 0, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ()), "imagefolder"))
register_dataset(DatasetSpec(DatasetInfo("npz", 3, 0, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ()), "npz"))
register_dataset(DatasetSpec(DatasetInfo("hf", 3, 0, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ()), "hf"))


@dataclass(repr=False, eq=False)
class Split:
    """One split of a dataset as two tensors on the same device.

    Attributes:
        images: ``uint8 [N, C, H, W]``, contiguous; for data that are not images (see
            :attr:`DatasetInfo.input_shape`), ``float32`` features or ``int64`` token ids ``[N, ...]``.
        labels: ``int64 [N]``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        image = self.images.dtype == torch.uint8
        if (self.images.dim() != 4 if image else self.images.dim() < 2) or self.labels.dim() != 1 \
                or len(self.images) != len(self.labels):
            raise ValueError(
                f"Split needs images [N, C, H, W] (or inputs [N, ...] that are not uint8) and labels [N], got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
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
