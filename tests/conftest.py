"""Shared fixtures: tiny real Fashion-MNIST studies and fresh databases."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
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
        "search": {"temperature": [2, 4], "alpha": [0.5], "lr": [2e-3], "replicates": 1},
        "baseline": {"ce": True},
        "finalists": {"top_k": 1, "seeds": 2},
    }


@pytest.fixture
def tiny_study_dict() -> dict:
    """A fresh copy of :func:`tiny_study_raw` for each test."""
    return tiny_study_raw()


@pytest.fixture(scope="session")
def small_fmnist_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Fashion-MNIST cut to its first 2,000 training and 500 test images, as an ``npz`` data file.

    A teacher always trains and predicts on the whole training split (``data.subset`` is the students'): on all
    of Fashion-MNIST (its logits on 57,000 training rows) the tiny study's teacher takes ~85 CPU-seconds.
    """
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST package files absent: apt-get install -y dataset-fashion-mnist")
    import numpy as np

    from kdbench.data.load import load_raw

    _, train, test, _ = load_raw("fashion-mnist")
    path = tmp_path_factory.mktemp("data") / "fmnist-small.npz"
    np.savez(path, x_train=train.images[:2000, 0].numpy(), y_train=train.labels[:2000].numpy(),
             x_test=test.images[:500, 0].numpy(), y_test=test.labels[:500].numpy())
    return path


def small_study_raw(npz: Path) -> dict:
    """:func:`tiny_study_raw` on the file of :func:`small_fmnist_npz` (200 validation rows, 500 test rows), its
    teacher trained on 30 batches of 64: the same study's shape, the teacher in ~19 CPU-seconds instead of ~85
    (validation accuracy 0.44 against the floor's 0.3)."""
    raw = tiny_study_raw()
    raw["data"] = {"dataset": "npz", "path": str(npz), "val_fraction": 0.1, "subset": 600}
    raw["teacher"] = {**raw["teacher"], "steps": 30, "batch_size": 64}
    return raw


@pytest.fixture
def small_study_dict(small_fmnist_npz: Path) -> dict:
    """A fresh copy of :func:`small_study_raw` for each test."""
    return small_study_raw(small_fmnist_npz)


def stop_outside_a_write(pid: int, db: str) -> None:
    """SIGSTOP process ``pid`` at a moment it holds no SQLite write lock (a worker stopped inside a write would
    block every other worker: SQLite has one writer), retrying until the database takes a write at once."""
    path = db.removeprefix("sqlite:///")
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        conn = sqlite3.connect(path, timeout=0.05)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return
        except sqlite3.OperationalError:  # locked: let it finish its write, try again
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            conn.close()
    raise AssertionError("the worker was inside a write every time")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kd.db'}"


# ------------------------------------------------------------------------------------------ PostgreSQL
# `make test` starts a throwaway server (.ci/postgres.sh) and exports its URL; any server whose user may
# CREATE DATABASE will do. Each test gets a database of its own, dropped afterwards.


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL in $KDBENCH_TEST_POSTGRES, or a skip that says why there is none."""
    url = os.environ.get("KDBENCH_TEST_POSTGRES")
    if not url:
        why = os.environ.get("KDBENCH_TEST_POSTGRES_WHY", "KDBENCH_TEST_POSTGRES is not set")
        pytest.skip(f"no PostgreSQL server ({why}); `make test` as root starts one (.ci/postgres.sh)")
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server for this test alone; dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.engine.make_url(postgres_server)
    name = f"kdbench_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.fail(f"KDBENCH_TEST_POSTGRES={postgres_server} cannot create a database: {exc}")
    yield admin.set(database=name).render_as_string(hide_password=False)
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    """``postgres_url`` through Debian's PgBouncer in transaction mode on loopback (tests/pgbouncer.py: a pool of
    ``pgbouncer.POOL_SIZE`` server connections), or a skip that says why there is none."""
    from pgbouncer import missing, pgbouncer

    why = missing()
    if why is not None:
        pytest.skip(why)
    with pgbouncer(postgres_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage kdbench supports, like Optuna's storage tests: SQLite always, PostgreSQL when there."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kd.db'}"
    return str(request.getfixturevalue("postgres_url"))
