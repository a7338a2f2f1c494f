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

from kdbench.data.catalog import DatasetSpec
from kdbench.data.formats import expected_files, missing_files
from kdbench.errors import DataNotFoundError

__all__ = ["SYSTEM_DATA_ROOT", "download", "find_dataset", "not_found_error", "search_roots"]

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
"""Where the distribution's ``dataset-*`` packages install datasets; the last place searched."""

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


def find_dataset(spec: DatasetSpec, roots: list[Path]) -> tuple[Path, Path] | None:
    """The first ``(search root, directory)`` that holds the whole dataset.

    Args:
        spec: the dataset's record (its ``dirs`` say where under a root it may sit).
        roots: the search roots, in order (see :func:`search_roots`).

    Returns:
        The root and the directory under it that holds every file of the dataset, or ``None``.
    """
    for search_root in roots:
        for directory in _candidate_dirs(spec, search_root):
            if not missing_files(spec, directory):
                return search_root, directory
    return None


def _candidate_dirs(spec: DatasetSpec, search_root: Path) -> list[Path]:
    return [search_root / sub if sub != "." else search_root for sub in spec.dirs]


def not_found_error(spec: DatasetSpec, roots: list[Path], download: bool) -> DataNotFoundError:
    """The error for a dataset that is in none of ``roots``, as one line a user can act on.

    Args:
        spec: the dataset's record (a format other than ``imagefolder``).
        roots: the search roots that were looked in.
        download: whether downloading was allowed (and so was tried).

    Returns:
        An error that lists every directory looked in (with the files missing from a partly filled one)
        and the ways to fix it: the system package if there is one, ``$KDBENCH_DATA``, downloading.
    """
    name = spec.name
    places = []
    for search_root in roots:
        for directory in _candidate_dirs(spec, search_root):
            missing = missing_files(spec, directory)
            partial = directory.is_dir() and 0 < len(missing) < len(expected_files(spec))
            places.append(f"{directory} (missing {', '.join(missing)})" if partial else str(directory))
    ways = []
    if spec.apt_package:
        ways.append(f"install it with `apt-get install -y {spec.apt_package}`")
    ways.append("put the files under one of those roots or set $KDBENCH_DATA to where they are")
    if not download:
        ways.append("allow downloading with `data.download: true`")
    else:
        ways.append("check the network (download was allowed but left nothing usable)")
    return DataNotFoundError(
        f"{name} not found; looked in: {'; '.join(places)}; to fix, {', or '.join(ways)}"
    )


def download(spec: DatasetSpec, root: Path) -> None:
    """Let torchvision fetch the dataset into ``root`` in the layout :func:`find_dataset` knows.

    Args:
        spec: the dataset's record; its ``torchvision_class`` downloads it.
        root: the search root to download into; created if absent.

    Raises:
        DataNotFoundError: the download failed (network, disk, checksum); the message says why.
    """
    import torchvision.datasets as tvd  # imported here: slow to import and only needed to download

    name = spec.name
    if spec.torchvision_class is None:
        raise DataNotFoundError(f"{name} cannot be downloaded by kdbench; put its files under one of the search roots")
    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(tvd, spec.torchvision_class)(root=str(root), train=True, download=True)
    except Exception as exc:  # network, disk, checksum: all end the same way for the user
        detail = " ".join(str(exc).split())
        raise DataNotFoundError(
            f"{name} could not be downloaded into {root} ({type(exc).__name__}: {detail}); "
            "put the files there by hand or set $KDBENCH_DATA to where they are"
        ) from exc
