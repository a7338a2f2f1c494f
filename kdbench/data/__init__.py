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
  optionally ``test/<class>/...``);
* ``torchvision:NAME``: where ``torchvision.datasets.NAME(root)`` reads its files under a root.

``npz`` and ``hf`` are not searched for: ``data.path`` names the file or folder, relative to the study file
(:mod:`~kdbench.data.sources`).

With ``download=True`` and nothing found, torchvision downloads the dataset into the first search root,
in the layout above, and it is read from there.

Splits (:func:`load_data`): the validation set is a stratified, seeded carve-out of the official training
set; ``subset`` then takes a stratified sample of what is left; the official test set is never touched.

The modules, each importing only from those above it:

* :mod:`~kdbench.data.catalog`: :class:`DatasetInfo`, the dataset registry (:data:`REGISTRY`, one
  :class:`DatasetSpec` per dataset, :func:`register_dataset`; :data:`DATASETS` its infos), :class:`Split`,
  :class:`Data`;
* :mod:`~kdbench.data.split`: :func:`stratified_split`, the seeded, class-proportional sample;
* :mod:`~kdbench.data.formats`: the readers of IDX files, CIFAR pickles and image folders (``FORMATS``);
* :mod:`~kdbench.data.files`: the search roots, the not-found message, the download (the search reads
  :data:`SYSTEM_DATA_ROOT` from this module: to change it, e.g. in a test, set it here);
* :mod:`~kdbench.data.memory`: what a dataset takes in memory and the refusal when it would not fit;
* :mod:`~kdbench.data.arrays`: :func:`from_arrays`, official sets given as arrays rather than files, and the
  resize every source gets (``data.image_size``);
* :mod:`~kdbench.data.sources`: ``npz``, ``hf`` and ``torchvision:NAME``, each read into arrays for
  :func:`from_arrays`;
* :mod:`~kdbench.data.load`: :func:`load_raw`, :func:`load_data` and :func:`load_study_data` (a study's
  ``data`` section), which put those together, and :func:`split_data` (official sets already read -> Data);
* :mod:`~kdbench.data.transforms`: :func:`normalize` and :func:`augment`, per batch on the device.
"""

from __future__ import annotations

from kdbench.data.arrays import from_arrays
from kdbench.data.catalog import DATASETS, REGISTRY, Data, DatasetInfo, DatasetSpec, Split, register_dataset
from kdbench.data.files import SYSTEM_DATA_ROOT, search_roots
from kdbench.data.load import load_data, load_raw, load_study_data, load_study_raw, split_data
from kdbench.data.split import stratified_split
from kdbench.data.transforms import AUGMENTS, augment, normalize

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "REGISTRY",
    "SYSTEM_DATA_ROOT",
    "Data",
    "DatasetInfo",
    "DatasetSpec",
    "Split",
    "augment",
    "from_arrays",
    "load_data",
    "load_raw",
    "load_study_data",
    "load_study_raw",
    "normalize",
    "register_dataset",
    "search_roots",
    "split_data",
    "stratified_split",
]
