"""Data from outside the registry's file formats: an ``.npz`` file, a Hugging Face data set, a torchvision class.

A study's ``data.dataset`` is a registered name (:mod:`~kdbench.data.catalog`), or:

* ``npz``: ``data.path`` is an ``.npz`` file holding ``x_train, y_train, x_test, y_test`` (``numpy.savez``);
* ``hf``: ``data.path`` is a Hugging Face ``datasets`` data set saved with ``save_to_disk`` (a ``DatasetDict``
  with ``train`` and ``test`` splits), or a folder of parquet files whose names say ``train`` or ``test``; the
  images are in ``data.image_column`` (PIL images, encoded image bytes or arrays) and the labels in
  ``data.label_column``; class names come from a ``ClassLabel`` feature when there is one;
* ``torchvision:NAME``: ``torchvision.datasets.NAME(root, train=... | split=...)`` reading its files from the
  search roots (:func:`~kdbench.data.files.search_roots`), downloaded only with ``data.download: true``.

Each source reads its training and test sets into arrays and hands them to
:func:`~kdbench.data.arrays.from_arrays`, which checks them (uint8 images in Keras' layouts, integer labels in
range, train and test alike) and resizes them once to ``data.image_size``. Every refusal is one
:class:`~kdbench.errors.ConfigError` line naming the ``data.*`` field and the fix.
"""

from __future__ import annotations

import difflib
import inspect
import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kdbench.data.arrays import from_arrays
from kdbench.data.catalog import DatasetInfo, Split
from kdbench.data.files import search_roots
from kdbench.data.memory import check_fits
from kdbench.errors import ConfigError, DataNotFoundError, first_line

if TYPE_CHECKING:
    from PIL import Image  # imported where images are decoded: IDX and CIFAR readers never load PIL

__all__ = ["NPZ_KEYS", "TORCHVISION_PREFIX", "read_hf", "read_npz", "read_torchvision", "torchvision_classes"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
"""The arrays an ``.npz`` data file holds (Keras' ``load_data()`` names)."""

TORCHVISION_PREFIX = "torchvision:"
"""``data.dataset: torchvision:NAME`` reads ``torchvision.datasets.NAME``."""

Read = tuple[DatasetInfo, Split, Split]


# --------------------------------------------------------------------------------------------------
# npz: numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)
# --------------------------------------------------------------------------------------------------


def read_npz(path: Path, image_size: int | None = None) -> Read:
    """The training and test sets of an ``.npz`` file (see :data:`NPZ_KEYS`).

    Args:
        path: the file (``data.path``, already made absolute).
        image_size: resize once to this square side.

    Raises:
        ConfigError: the file is missing or not an ``.npz``, a key is missing (the message lists those there),
            or :func:`~kdbench.data.arrays.from_arrays` refuses the arrays.
    """
    source = f"data.path {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{source}: file not found (a path relative to the study file); give the .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                there = ", ".join(npz.files) or "nothing"
                raise ConfigError(f"{source} has no {', '.join(missing)} (it holds: {there}); "
                                  f"save it with numpy.savez(path, {'=..., '.join(NPZ_KEYS)}=...)")
            arrays = [npz[k] for k in NPZ_KEYS]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{source} is not a readable .npz file ({first_line(exc)}); "
                          "write it with numpy.savez") from None
    return from_arrays(*arrays, name="npz", source=source, image_size=image_size)


# --------------------------------------------------------------------------------------------------
# hf: a DatasetDict saved with save_to_disk, or a folder of parquet files
# --------------------------------------------------------------------------------------------------


def read_hf(path: Path, image_column: str = "image", label_column: str = "label",
            image_size: int | None = None) -> Read:
    """The ``train`` and ``test`` splits of a Hugging Face data set on disk.

    Args:
        path: a ``save_to_disk`` folder or a folder of parquet files (``data.path``, already made absolute).
        image_column: the column of the images.
        label_column: the column of the integer labels (a ``ClassLabel`` gives the class names).
        image_size: resize every image to this square side as it is read; ``None`` needs them all one size.

    Raises:
        ConfigError: the folder is missing or holds neither form, a split or column is missing (the message
            lists those there), ``datasets`` is not installed, or the images or labels are refused.
    """
    source = f"data.path {str(path)!r}"
    if not path.is_dir():
        raise ConfigError(f"{source}: folder not found (a path relative to the study file); give the folder "
                          "save_to_disk wrote, or a folder of parquet files")
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.dataset: hf needs the datasets package; pip install 'kdbench[hf]'") from None
    splits = _hf_splits(path, source, datasets)
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise ConfigError(f"{source} has no {' or '.join(missing)} split (it has: {', '.join(splits) or 'none'}); "
                          "kdbench needs the official train and test splits")
    train, test = splits["train"], splits["test"]
    for split_name, ds in (("train", train), ("test", test)):
        for field, column in (("data.image_column", image_column), ("data.label_column", label_column)):
            if column not in ds.column_names:
                raise ConfigError(f"{field}: {source} {split_name} has no column {column!r}; its columns are "
                                  f"{', '.join(ds.column_names)}")
    feature = train.features[label_column]
    classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    xs = _same_channels(*(_hf_images(ds[image_column], image_size, f"{source} {name}")
                          for name, ds in (("train", train), ("test", test))))
    ys = [np.asarray(list(ds[label_column])) for ds in (train, test)]
    return from_arrays(xs[0], ys[0], xs[1], ys[1], name="hf", classes=classes, source=source)


def _hf_splits(path: Path, source: str, datasets: Any) -> dict[str, Any]:
    """The splits of a ``save_to_disk`` folder, or of parquet files grouped by ``train``/``test`` in their names
    (read without the library's cache: nothing is written)."""
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # the library raises many kinds for a damaged folder
            raise ConfigError(f"{source} cannot be read by datasets.load_from_disk ({first_line(exc)})") from None
        if isinstance(loaded, datasets.Dataset):
            raise ConfigError(f"{source} holds one Dataset, not a DatasetDict with train and test splits; save "
                              "DatasetDict({'train': ..., 'test': ...}) instead")
        return dict(loaded)
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise ConfigError(f"{source} holds neither a save_to_disk data set (dataset_dict.json) nor parquet files; "
                          "give one of those")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    out: dict[str, Any] = {}
    for split in ("train", "test"):
        mine = [f for f in files if split in f.relative_to(path).as_posix().lower()]
        if mine:
            try:
                table = pa.concat_tables([pq.read_table(f) for f in mine])
            except (OSError, pa.ArrowException) as exc:
                raise ConfigError(f"{source}: a {split} parquet file cannot be read ({first_line(exc)})") from None
            out[split] = datasets.Dataset(InMemoryTable(table))
    return out


def _decode(value: Any) -> Image.Image | npt.NDArray[Any]:
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes") is not None:  # an Image feature not decoded
        return Image.open(io.BytesIO(value["bytes"]))
    return np.asarray(value)


_GRAY_MODES = ("1", "L", "I", "I;16", "F")


def _hf_images(values: Any, image_size: int | None, source: str) -> npt.NDArray[np.uint8]:
    """The column's images as one ``uint8 (N, H, W)`` array (all gray) or ``(N, H, W, 3)``; each decoded once and
    resized as it is read when ``image_size`` is set."""
    from PIL import Image

    values = list(values)
    images = []
    for value in values:
        img = _decode(value)
        if not isinstance(img, Image.Image):
            if img.dtype != np.uint8 or img.ndim not in (2, 3):
                raise ConfigError(f"{source}: an image of {img.dtype} {img.shape} is not a uint8 image; kdbench "
                                  "trains on images, not on features or token ids")
            img = Image.fromarray(img)
        img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
        if image_size is not None:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        images.append(np.asarray(img, dtype=np.uint8))
        if len(images) == 1:  # one image tells the size of all: refuse before reading the rest
            check_fits(len(values), 3, max(images[0].shape[:2]), "cpu", what=source)
    sizes = sorted({im.shape[:2] for im in images})
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sizes[:3])
        raise ConfigError(f"data.image_size: {source} has images of {len(sizes)} sizes ({shown}, ...); set "
                          "data.image_size to resize them all to one at load")
    if any(im.ndim == 3 for im in images):  # colour among them: the gray ones repeated into 3 channels
        images = [im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=-1) for im in images]
    return np.stack(images) if images else np.zeros((0, 1, 1), np.uint8)


def _same_channels(*sets: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
    """Gray sets as they are; where any set holds colour, every gray image repeated into 3 channels."""
    if all(x.ndim == 3 for x in sets):
        return list(sets)
    return [x if x.ndim == 4 else np.repeat(x[..., None], 3, axis=-1) for x in sets]


# --------------------------------------------------------------------------------------------------
# torchvision:NAME: torchvision.datasets' classification sets, from local files
# --------------------------------------------------------------------------------------------------


def torchvision_classes() -> dict[str, Any]:
    """The ``torchvision.datasets`` classes that take a ``train`` flag or a ``split`` (the classification sets
    among them), by name."""
    import torchvision.datasets as tvd  # imported here: slow, and only these sources need it

    out = {}
    for name in tvd.__all__:
        cls = getattr(tvd, name)
        if inspect.isclass(cls):
            params = inspect.signature(cls.__init__).parameters
            if "train" in params or "split" in params:
                out[name] = cls
    return out


def read_torchvision(dataset: str, root: str | Path | None, download: bool, image_size: int | None = None) -> Read:
    """``torchvision.datasets.NAME``'s training and test sets, from the first search root that holds them.

    Args:
        dataset: ``torchvision:NAME`` (NAME's case does not matter).
        root: the study's ``data.root`` (see :func:`~kdbench.data.files.search_roots`).
        download: let torchvision download into the first search root when no root holds the files.
        image_size: resize once to this square side.

    Raises:
        ConfigError: an unknown name (close ones suggested), or a class that is not image classification.
        DataNotFoundError: the files are in no search root (and ``download`` is false, or it failed).
    """
    name = dataset[len(TORCHVISION_PREFIX):].strip()
    known = torchvision_classes()
    by_lower = {k.lower(): k for k in known}
    if name.lower() not in by_lower:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(TORCHVISION_PREFIX + by_lower[c] for c in close)}?" if close else (
            f"use one of {', '.join(sorted(known))}")
        raise ConfigError(f"data.dataset {dataset!r} is not a torchvision dataset; {hint}")
    cls = known[by_lower[name.lower()]]
    label = TORCHVISION_PREFIX + cls.__name__
    roots = search_roots(root)
    errors = []
    for search_root in roots:
        try:
            sets = [_torchvision_split(cls, search_root, train, False) for train in (True, False)]
        except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found ..." and kin
            errors.append(first_line(exc))
            continue
        return _torchvision_arrays(label, sets, image_size)
    if download:
        try:
            roots[0].mkdir(parents=True, exist_ok=True)
            sets = [_torchvision_split(cls, roots[0], train, True) for train in (True, False)]
        except Exception as exc:  # network, disk, checksum: all end the same way for the user
            raise DataNotFoundError(f"{label} could not be downloaded into {roots[0]} ({type(exc).__name__}: "
                                    f"{first_line(exc)}); put the files there by hand") from None
        return _torchvision_arrays(label, sets, image_size)
    import torchvision.datasets as tvd

    where = roots[0] / cls.__name__ / "raw" if issubclass(cls, tvd.MNIST) else roots[0]
    raise DataNotFoundError(
        f"{label} not found under {', '.join(str(r) for r in roots)} (torchvision: {errors[0] if errors else '?'}); "
        f"put its files in {where}, where torchvision.datasets.{cls.__name__} reads them, or set data.download: true"
    )


def _torchvision_split(cls: Any, root: Path, train: bool, download: bool) -> Any:
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"train": train} if "train" in params else {"split": "train" if train else "test"}
    if "download" in params:
        kwargs["download"] = download
    try:
        return cls(root=str(root), **kwargs)
    except (TypeError, ValueError) as exc:  # EMNIST's split, a split named otherwise: not a plain train/test set
        raise ConfigError(f"data.dataset {TORCHVISION_PREFIX}{cls.__name__}: torchvision.datasets.{cls.__name__}"
                          f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) refused ({first_line(exc)}); "
                          "kdbench reads classification sets with a train/test split") from None


def _torchvision_arrays(label: str, sets: list[Any], image_size: int | None) -> Read:
    """The arrays torchvision holds (``data`` with ``targets``/``labels``), else each ``(image, label)`` item."""
    from PIL import Image

    arrays: list[Any] = []
    for ds in sets:
        data = getattr(ds, "data", None)
        labels = getattr(ds, "targets", getattr(ds, "labels", None))
        if data is not None and labels is not None and len(data) == len(ds) and np.asarray(data[:1]).dtype == np.uint8:
            arrays += [np.asarray(data), np.asarray(labels)]
            continue
        images, ys = [], []
        for i in range(len(ds)):
            img, y = ds[i]
            if not isinstance(img, Image.Image) or not isinstance(y, (int, np.integer)):
                raise ConfigError(f"data.dataset {label}: its items are ({type(img).__name__}, {type(y).__name__}),"
                                  " not (image, class index); kdbench reads image classification sets")
            if image_size is not None:
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            ys.append(int(y))
        if len({im.shape for im in images}) > 1:
            raise ConfigError(f"data.image_size: {label} has images of several sizes; set data.image_size to "
                              "resize them all to one at load")
        arrays += [np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8), np.asarray(ys)]
    classes = getattr(sets[0], "classes", None)
    return from_arrays(*arrays, name=label, classes=list(classes) if classes else None, source=f"data.dataset {label}",
                       image_size=image_size)
