"""``data:``: which data, and how it is split."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kdbench.config.base import Strict

__all__ = ["DataConfig"]


class DataConfig(Strict):
    """Which data, and how it is split. Sizes are in samples."""

    # fashion-mnist | mnist | cifar10 | cifar100 | imagefolder | npz | hf | torchvision:NAME
    dataset: str = "fashion-mnist"
    root: str | None = None  # folder holding the files; else $KDBENCH_DATA, ./data, /usr/share/datasets
    path: str | None = None  # relative to the study file; npz: the .npz file; hf: save_to_disk's or a parquet folder
    image_column: str = "image"  # hf: the column holding the images
    label_column: str = "label"  # hf: the column holding the integer labels
    download: bool = False  # allow torchvision's download when the files are nowhere to be found
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1  # of the official training set, stratified
    subset: Annotated[int, Field(gt=0)] | None = None  # labelled training samples for the student
    augment: Literal["none", "flip", "crop", "crop+flip"] = "none"  # batched on the device, seeded
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None  # pixels; resized once at load (imagefolder: 32)
