"""``data:``: which data, and how it is split."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kdbench.config.base import Strict

__all__ = ["DataConfig"]


class DataConfig(Strict):
    """Which data, and how it is split. Sizes are in samples."""

    dataset: str = Field(default="fashion-mnist", json_schema_extra={"examples": [
        "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "npz", "hf", "torchvision:KMNIST"]})
    """A registered dataset (fashion-mnist, mnist, cifar10, cifar100), ``imagefolder``, ``npz`` or ``hf`` (with
    ``data.path``), or ``torchvision:NAME`` (any torchvision.datasets class with a train/test split)."""
    root: str | None = None
    """Folder holding the files (imagefolder: the folder itself, with ``train/<class>/``); default searched in
    ``$KDBENCH_DATA``, ``./data``, ``/usr/share/datasets``. Not in the hash."""
    path: str | None = None
    """npz: the ``.npz`` file; hf: a ``save_to_disk`` or parquet folder (relative to the study file). Not in the
    hash: the data's digest is checked instead."""
    image_column: str = "image"
    """hf: the column holding the images."""
    label_column: str = "label"
    """hf: the column holding the integer labels."""
    download: bool = False
    """Allow torchvision's download when the files are nowhere to be found."""
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Fraction of the official training set held out for validation, stratified (what the search selects on)."""
    subset: Annotated[int, Field(gt=0)] | None = None
    """Labelled training samples for the student, stratified; default all (the teacher always trains on all)."""
    augment: Literal["none", "flip", "crop", "crop+flip"] = "none"
    """Augmentation, batched on the device and seeded: horizontal flip, pad-and-crop, or both."""
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None
    """Pixels (side of a square image): every source resized once at load; default the dataset's (imagefolder:
    32)."""
