"""Where a dataset's files are looked for, what to say when they are nowhere, and how to download them.

The search roots (:func:`search_roots`, first hit wins) are the study's ``data.root``, ``$KDBENCH_DATA``,
``./data`` and :data:`SYSTEM_DATA_ROOT`. Under each root a dataset may sit in a few directories
(torchvision's layout among them); :func:`find_dataset` returns the first that holds all of its files.
When none does, :func:`not_found_error` lists every place looked in and the ways to fix it, and with
``download=True`` :func:`download` lets torchvision fetch the dataset into the first root instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdbench.data.formats import expected_files, missing_files
from kdbench.errors import DataNotFoundError

__all__ = ["SYSTEM_DATA_ROOT", "download", "find_dataset", "not_found_error", "search_roots"]

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
"""Where the distribution's ``dataset-*`` packages install datasets; the last place searched."""

# The directories under a search root that may hold a dataset, in the order they are tried ("." is the
# root itself). torchvision downloads into the second of the IDX ones and into the CIFAR ones.
_DATASET_DIRS = {
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "."),
    "mnist": ("mnist", "MNIST/raw"),
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
}
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


def find_dataset(name: str, roots: list[Path]) -> tuple[Path, Path] | None:
    """The first ``(search root, directory)`` that holds the whole dataset.

    Args:
        name: a :data:`~kdbench.data.catalog.DATASETS` key other than ``imagefolder``.
        roots: the search roots, in order (see :func:`search_roots`).

    Returns:
        The root and the directory under it that holds every file of the dataset, or ``None``.
    """
    for search_root in roots:
        for directory in _candidate_dirs(name, search_root):
            if not missing_files(name, directory):
                return search_root, directory
    return None


def _candidate_dirs(name: str, search_root: Path) -> list[Path]:
    return [search_root / sub if sub != "." else search_root for sub in _DATASET_DIRS[name]]


def not_found_error(name: str, roots: list[Path], download: bool) -> DataNotFoundError:
    """The error for a dataset that is in none of ``roots``, as one line a user can act on.

    Args:
        name: a :data:`~kdbench.data.catalog.DATASETS` key other than ``imagefolder``.
        roots: the search roots that were looked in.
        download: whether downloading was allowed (and so was tried).

    Returns:
        An error that lists every directory looked in (with the files missing from a partly filled one)
        and the ways to fix it: the system package if there is one, ``$KDBENCH_DATA``, downloading.
    """
    places = []
    for search_root in roots:
        for directory in _candidate_dirs(name, search_root):
            missing = missing_files(name, directory)
            partial = directory.is_dir() and 0 < len(missing) < len(expected_files(name))
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


def download(name: str, root: Path) -> None:
    """Let torchvision fetch the dataset into ``root`` in the layout :func:`find_dataset` knows.

    Args:
        name: a :data:`~kdbench.data.catalog.DATASETS` key other than ``imagefolder``.
        root: the search root to download into; created if absent.

    Raises:
        DataNotFoundError: the download failed (network, disk, checksum); the message says why.
    """
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
