"""The examples run as their READMEs say, through the real CLI, in a temporary copy of their folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdbench.store import Store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_own_model_example_makes_its_data_sweeps_and_reports(needs_fmnist: None, tmp_path: Path) -> None:
    """examples/own-model: make_data.py writes the .npz, then a user's model file (nets.py:Teacher and
    nets.py:Student) and that .npz make a full small sweep and a report."""
    folder = tmp_path / "own-model"
    shutil.copytree(EXAMPLES / "own-model", folder, ignore=shutil.ignore_patterns("*.npz", "__pycache__"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, *args], cwd=folder, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done

    run("make_data.py")
    with np.load(folder / "fmnist-small.npz") as npz:
        assert npz["x_train"].shape == (3000, 28, 28) and npz["x_test"].shape == (1000, 28, 28)
        assert npz["x_train"].dtype == np.uint8 and set(np.unique(npz["y_train"])) == set(range(10))
    db = f"sqlite:///{tmp_path / 'kd.db'}"
    run("-m", "kdbench", "sweep", "study.yaml", "--storage", db, "--cache-dir", str(tmp_path / "cache"),
        "--threads", "1", "--device", "cpu", "--quiet")
    runs = Store.open(db).runs("own-model")
    assert len(runs) == 7 and (runs["state"] == "complete").all()  # 2 KD cells + CE, then 2 seeds x (KD, CE)
    assert set(runs["loss"]) == {"kd", "ce"}
    assert list((tmp_path / "cache" / "teachers").iterdir()), "no teacher was cached"
    out = tmp_path / "report"
    run("-m", "kdbench", "report", "own-model", "--storage", db, "--out", str(out))
    for name in ("index.html", "comparison.csv", "comparison.md", "grid.csv", "predictions.png"):
        assert (out / name).stat().st_size > 0, name
    assert "nets.py:Student" in (out / "index.html").read_text()
