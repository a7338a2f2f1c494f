"""Shared fixtures: tiny real Fashion-MNIST studies and fresh databases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(2)


@pytest.fixture
def needs_fmnist() -> None:
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST package files absent: apt-get install -y dataset-fashion-mnist")


def tiny_study_raw() -> dict:
    """A real study small enough for seconds: 600 labelled samples, tiny models, one epoch."""
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"dataset": "fashion-mnist", "val_fraction": 0.05, "subset": 600},
        "teacher": {"model": "cnn-s", "epochs": 1, "steps": 60, "lr": 3e-3, "batch_size": 128,
                    "min_accuracy": 0.3},
        "student": {"model": "mlp-800", "epochs": 1, "batch_size": 64},
        "search": {"temperature": [2, 4], "alpha": [0.5], "lr": {"low": 1e-3, "high": 3e-3, "log": True},
                   "pruner": "none"},
        "baseline": {"ce": True, "trials": 1},
        "finalists": {"top_k": 1, "seeds": 2},
    }


@pytest.fixture
def tiny_study_dict() -> dict:
    """A fresh copy of :func:`tiny_study_raw` for each test."""
    return tiny_study_raw()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kd.db'}"
