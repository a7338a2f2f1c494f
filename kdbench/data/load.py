"""Loading a dataset: find and read its official sets, then carve out validation, subsample and move it.

:func:`load_raw` reads the official training and test sets into CPU tensors (finding the files, or
downloading them, and resizing once if asked); :func:`load_data` splits those into the train / val / test
:class:`~kdbench.data.catalog.Data` a run trains on: the validation set is a stratified, seeded carve-out
of the official training set, ``subset`` then takes a stratified sample of what is left, and the
official test set is never touched.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kdbench.data.arrays import resize_images
from kdbench.data.catalog import Data, DatasetInfo, Split, dataset_spec, fingerprint
from kdbench.data.files import download as download_dataset
from kdbench.data.files import find_dataset, not_found_error, search_roots
from kdbench.data.formats import load_imagefolder, read_dataset
from kdbench.data.memory import check_fits
from kdbench.data.sources import TORCHVISION_PREFIX, read_hf, read_npz, read_torchvision, torchvision_classes
from kdbench.data.split import stratified_split
from kdbench.defaults import IMAGEFOLDER_SIZE
from kdbench.errors import ConfigError

if TYPE_CHECKING:
    from kdbench.config.data import DataConfig

__all__ = ["load_data", "load_raw", "load_study_data", "load_study_raw", "split_data"]


def load_raw(
    dataset: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    path: str | Path | None = None,
    image_column: str = "image",
    label_column: str = "label",
) -> tuple[DatasetInfo, Split, Split, Path | None]:
    """Read a dataset's official training and test sets into CPU tensors.

    Args:
        dataset: a key of :data:`DATASETS` (case and ``_``/``-`` do not matter), or ``torchvision:NAME``.
        root: the study's ``data.root``, searched first; for ``imagefolder``, the folder itself (required).
        download: if nothing is found, let torchvision download it into the first search root.
        image_size: resize the images to this square side once, here (bilinear, antialiased); ``None``
            keeps the native size (``imagefolder``: 32).
        path: ``npz``: the ``.npz`` file; ``hf``: the data set's folder (absolute, or relative to the
            working directory: :func:`load_study_data` makes a study's relative to its file).
        image_column: ``hf``: the images' column.
        label_column: ``hf``: the labels' column.

    Returns:
        ``(info, train, test, root_found)``: ``info.image_size`` is the size as loaded; ``root_found`` is
        the search root the files were under (for ``imagefolder``, the folder itself; for ``npz`` and
        ``hf``, ``path``).

    Raises:
        ConfigError: unknown dataset, bad ``image_size``, ``path`` missing or given where it does not apply,
            a file that is not in the expected format, or data that would not fit in memory.
        DataNotFoundError: the files are in none of the searched places (the message lists them).
    """
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
        raise ConfigError(f"data.image_size must be a positive integer, got {image_size!r}")
    size = None if image_size is None else int(image_size)
    if dataset.strip().lower().startswith(TORCHVISION_PREFIX):
        _no_path(dataset, path)
        info, train, test = read_torchvision(dataset.strip(), root, download, size)
        return info, train, test, None
    try:
        spec = dataset_spec(dataset)
    except ConfigError as exc:  # a torchvision class under its own name: say how to write it
        tv = {k.lower(): k for k in torchvision_classes()}.get(dataset.strip().lower())
        if tv is None:
            raise
        raise ConfigError(f"{exc}; torchvision's is data.dataset: {TORCHVISION_PREFIX}{tv}") from None
    if spec.format in ("npz", "hf"):
        if path is None or str(path) == "":
            raise ConfigError(f"data.path: data.dataset {spec.name} reads data.path, which is not set; give "
                              + ("the .npz file" if spec.format == "npz" else "the save_to_disk or parquet folder")
                              + " (relative to the study file)")
        file = Path(path).expanduser().absolute()
        if spec.format == "npz":
            info, train, test = read_npz(file, size)
        else:
            info, train, test = read_hf(file, image_column, label_column, size)
        return info, train, test, file
    _no_path(dataset, path)
    if spec.format == "imagefolder":
        return load_imagefolder(root, IMAGEFOLDER_SIZE if size is None else size)

    roots = search_roots(root)
    found = find_dataset(spec, roots)
    if found is None and download:
        download_dataset(spec, roots[0])
        found = find_dataset(spec, roots[:1])
    if found is None:
        raise not_found_error(spec, roots, download)
    search_root, directory = found
    info, train, test = read_dataset(spec, directory)
    if size is not None and size != info.image_size:
        check_fits(len(train) + len(test), info.channels, size, "cpu", what=info.name)
        info = replace(info, image_size=size)
        train = Split(resize_images(train.images, size, what=info.name), train.labels)
        test = Split(resize_images(test.images, size, what=info.name), test.labels)
    return info, train, test, search_root


def _no_path(dataset: str, path: str | Path | None) -> None:
    if path is not None and str(path) != "":
        raise ConfigError(f"data.path applies to data.dataset npz and hf, not {dataset}; remove data.path "
                          "(data.root says where other datasets' files are)")


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
    path: str | Path | None = None,
    image_column: str = "image",
    label_column: str = "label",
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
        path: ``npz`` and ``hf``: the file or folder (see :func:`load_raw`).
        image_column: ``hf``: the column of the images.
        label_column: ``hf``: the column of the integer labels.

    Returns:
        The splits, the dataset info, the official-set indices of ``train`` and the root found.

    Raises:
        ConfigError: an argument is out of range (the message names the ``data.*`` field).
        DataNotFoundError: the dataset is not found (and not downloaded).
    """
    if isinstance(val_fraction, bool) or not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
    info, official_train, test, found = load_raw(dataset, root=root, download=download, image_size=image_size,
                                                 path=path, image_column=image_column, label_column=label_column)
    return split_data(info, official_train, test, root=found, val_fraction=val_fraction, subset=subset,
                      seed=seed, device=device)


def split_data(
    info: DatasetInfo,
    official_train: Split,
    test: Split,
    *,
    root: Path | None = None,
    val_fraction: float = 0.1,
    subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Data:
    """The train / val / test :class:`Data` of official training and test sets already read (what
    :func:`load_raw` or :func:`~kdbench.data.arrays.from_arrays` gives): the second half of :func:`load_data`.

    Args:
        info: the dataset's facts.
        official_train: the official training set, CPU tensors.
        test: the official test set, CPU tensors; only ever moved.
        root: where the files were found, if anywhere.
        val_fraction, subset, seed, device: as :func:`load_data`.

    Raises:
        ConfigError: an argument is out of range (the message names the ``data.*`` field).
    """
    if isinstance(val_fraction, bool) or not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
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
    if torch.device(device).type != "cpu":  # on the CPU they are in memory already
        check_fits(len(train_idx) + len(val_idx) + len(test), info.channels, info.image_size, device,
                   num_classes=info.num_classes, what=info.name,
                   input_bytes=None if info.is_image else test.images[0].numel() * test.images.element_size())

    return Data(
        info=info,
        train=official_train.take(train_idx).to(device),
        val=official_train.take(val_idx).to(device),
        test=test.to(device),
        train_indices=train_idx,
        root=root,
        fingerprint=fingerprint(official_train, test),
    )


def load_study_raw(data: DataConfig, folder: Path | None = None) -> tuple[DatasetInfo, Split, Split, Path | None]:
    """:func:`load_raw` for a study's ``data`` section, ``data.path`` taken relative to the study's ``folder``.

    Args:
        data: the study's ``data`` section.
        folder: the study file's folder (:attr:`kdbench.config.Study.folder`); ``None``: the working directory.
    """
    raw = load_raw(data.dataset, root=data.root, download=data.download, image_size=data.image_size,
                   path=study_path(data.path, folder), image_column=data.image_column,
                   label_column=data.label_column)
    if not raw[0].is_image and data.augment != "none":
        raise ConfigError(f"data.augment: {data.augment!r} moves pixels, but {data.dataset}'s inputs are not images "
                          f"({raw[1].images.dtype} {tuple(raw[0].input_shape or ())} each); set data.augment: none")
    return raw


def study_path(path: str | None, folder: Path | None) -> Path | None:
    """``data.path`` as a study means it: relative to the study file's ``folder`` (else the working directory)."""
    if path is None or path == "":
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else (folder or Path.cwd()) / p


def load_study_data(
    data: DataConfig, *, seed: int, device: str | torch.device = "cpu", subset: bool = True,
    folder: Path | None = None,
) -> Data:
    """:func:`load_data` for a study's ``data`` section: the one place a study's fields become a load.

    Args:
        data: the study's ``data`` section.
        seed: the study's seed (the validation carve-out and the subset).
        device: where the splits are put.
        subset: apply ``data.subset`` (the students' data); ``False`` trains on every row left after the
            validation carve-out (the teacher's data).
        folder: the study file's folder, where a relative ``data.path`` starts (see :func:`load_study_raw`).
    """
    info, official_train, test, found = load_study_raw(data, folder)
    return split_data(info, official_train, test, root=found, val_fraction=data.val_fraction,
                      subset=data.subset if subset else None, seed=seed, device=device)
