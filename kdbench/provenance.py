"""Where a number came from: kdbench's git commit, library versions and the device. Imports torch only to name
a device, so that `kdbench --version` and the store can ask for the commit without it."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["device_name", "kdbench_commit", "library_versions", "provenance"]

_LIBRARIES = ("kdbench", "torch", "torchvision", "optuna", "sqlalchemy", "numpy", "pandas")


@functools.cache
def kdbench_commit() -> str:
    """The git commit kdbench runs from (``+dirty`` when it has uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that decide kdbench's numbers."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_name(device: torch.device | str) -> str:
    """A readable device name: the GPU's model, or 'cpu (<processor>, N threads)'."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{dev.index or 0} ({torch.cuda.get_device_name(dev)})"
    proc = platform.processor() or platform.machine()
    return f"cpu ({proc}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device | str) -> dict[str, Any]:
    """Commit, versions and device in one JSON-able dict."""
    return {"commit": kdbench_commit(), "versions": library_versions(), "device": device_name(device)}
