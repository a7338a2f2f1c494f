"""pyproject.toml declares ranges, never pins (a GPU user's own CUDA torch must survive `pip install kdbench`),
and those ranges admit the versions this suite runs on. `.ci/foreign_torch.sh` checks the first half with pip
itself, in a fresh venv with another torch."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import kdbench

PYPROJECT = Path(kdbench.__file__).resolve().parent.parent / "pyproject.toml"


def _declared() -> list[Requirement]:
    return [Requirement(r) for r in requires("kdbench") or []]


def test_the_installed_metadata_is_this_checkout_s() -> None:
    """Otherwise the other tests here check an old install's ranges: `pip install -e .` again."""
    if not PYPROJECT.exists():
        pytest.skip("kdbench is not run from a source checkout")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = {str(r) for r in _declared()}
    for dep in project["dependencies"]:
        assert str(Requirement(dep)) in declared, f"{dep}: not in the installed metadata; pip install -e . again"


def test_every_dependency_is_a_range_with_a_floor() -> None:
    for req in _declared():
        if req.marker is not None:  # an extra's: tools and optional sources, never pinned either
            assert not any(s.operator in ("==", "===") for s in req.specifier), req
            continue
        ops = {s.operator for s in req.specifier}
        assert ops & {">=", ">", "~="} and not ops & {"==", "==="}, f"{req}: a range with a floor, not a pin"


def test_installed_versions_satisfy_every_declared_range() -> None:
    """Every base requirement is installed within its range; an extra's, where it is installed (make test
    installs dev and postgres)."""
    checked = []
    for req in _declared():
        try:
            have = version(req.name)
        except PackageNotFoundError:
            assert req.marker is not None, f"{req}: a dependency that is not installed"
            continue
        assert req.specifier.contains(have, prereleases=True), f"{req.name} {have} is outside {req}"
        checked.append(req.name)
    assert {"torch", "torchvision", "optuna"} <= set(checked)
