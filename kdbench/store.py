"""kdbench's tables beside Optuna's in one SQLAlchemy database, and the queries that return DataFrames.

Optuna owns ``studies``, ``trials`` and its other tables in the same database; ours carry a
``kdbench_`` prefix. Grid visits are claimed in ``kdbench_runs`` under a unique constraint
(study, visit), so two workers never run the same visit, even on SQLite, whose Optuna storage cannot
lock an enqueued trial.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from kdbench.errors import StoreError

__all__ = [
    "DEFAULT_STORAGE",
    "SCHEMA_VERSION",
    "EpochRow",
    "RunRow",
    "Store",
    "StudyRow",
    "TeacherRow",
    "load_runs",
    "retry_schema_race",
    "shown_url",
    "worker_id",
]

DEFAULT_STORAGE = "sqlite:///kdbench.db"
SCHEMA_VERSION = 1
SQLITE_BUSY_TIMEOUT_S = 60.0  # seconds a writer waits for the lock before failing
SCHEMA_RETRY_S = 0.2  # seconds before retrying a table creation that raced another worker (times the attempt)
T = TypeVar("T")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def worker_id() -> str:
    """``host:pid``, the owner written on claimed runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "kdbench_meta"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)


class StudyRow(Base):
    __tablename__ = "kdbench_studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    config: Mapped[str] = mapped_column(sa.Text)  # resolved config as JSON
    config_hash: Mapped[str] = mapped_column(sa.String(32))
    teacher_key: Mapped[str | None] = mapped_column(sa.String(32))
    created: Mapped[dt.datetime] = mapped_column(default=_now)
    commit: Mapped[str] = mapped_column(sa.String(64), default="unknown")


class TeacherRow(Base):
    __tablename__ = "kdbench_teachers"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(32), unique=True)
    model: Mapped[str] = mapped_column(sa.String(64))
    dataset: Mapped[str] = mapped_column(sa.String(64))
    parameters: Mapped[int]
    val_acc: Mapped[float]
    test_acc: Mapped[float]
    train_seconds: Mapped[float | None]
    infer_ms_per_batch: Mapped[float | None]
    cache_location: Mapped[str] = mapped_column(sa.Text)
    device: Mapped[str] = mapped_column(sa.String(200))
    versions: Mapped[str] = mapped_column(sa.Text)
    commit: Mapped[str] = mapped_column(sa.String(64))
    test_predictions: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # int16 argmax over the test set
    created: Mapped[dt.datetime] = mapped_column(default=_now)


class RunRow(Base):
    """One training run: a KD or CE search trial, or a finalist seed."""

    __tablename__ = "kdbench_runs"
    __table_args__ = (sa.UniqueConstraint("study_id", "visit", name="uq_kdbench_runs_visit"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("kdbench_studies.id", ondelete="CASCADE"), index=True)
    visit: Mapped[str] = mapped_column(sa.String(200))  # the planned visit this run fulfils
    kind: Mapped[str] = mapped_column(sa.String(16))  # kd | ce | finalist
    loss: Mapped[str] = mapped_column(sa.String(8))  # kd | ce: what the student was trained with
    rank: Mapped[int | None]  # finalists: 0 = best configuration of its loss
    optuna_study: Mapped[str | None] = mapped_column(sa.String(200))
    trial_number: Mapped[int | None]
    trial_id: Mapped[int | None]
    temperature: Mapped[float | None]
    alpha: Mapped[float | None]
    lr: Mapped[float | None]
    seed: Mapped[int]
    state: Mapped[str] = mapped_column(sa.String(16), index=True)  # running|complete|pruned|failed|interrupted
    attempt: Mapped[int] = mapped_column(default=1)
    owner: Mapped[str | None] = mapped_column(sa.String(200))
    heartbeat: Mapped[dt.datetime | None]
    val_acc: Mapped[float | None]
    val_loss: Mapped[float | None]
    test_acc: Mapped[float | None]
    test_loss: Mapped[float | None]
    epochs_done: Mapped[int] = mapped_column(default=0)
    wall_time_s: Mapped[float | None]
    samples_per_s: Mapped[float | None]
    infer_ms_per_batch: Mapped[float | None]
    parameters: Mapped[int | None]
    device: Mapped[str | None] = mapped_column(sa.String(200))
    versions: Mapped[str | None] = mapped_column(sa.Text)
    commit: Mapped[str | None] = mapped_column(sa.String(64))
    config_hash: Mapped[str] = mapped_column(sa.String(32))
    error: Mapped[str | None] = mapped_column(sa.Text)
    weights_path: Mapped[str | None] = mapped_column(sa.Text)
    test_predictions: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    started: Mapped[dt.datetime | None]
    finished: Mapped[dt.datetime | None]


class EpochRow(Base):
    __tablename__ = "kdbench_epochs"
    __table_args__ = (sa.UniqueConstraint("run_id", "epoch", name="uq_kdbench_epochs"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("kdbench_runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]
    train_loss: Mapped[float | None]
    val_acc: Mapped[float | None]
    val_loss: Mapped[float | None]
    seconds: Mapped[float]
    lr: Mapped[float | None]


RUN_COLUMNS = [
    "study", "visit", "kind", "loss", "rank", "optuna_study", "trial_number", "temperature", "alpha", "lr",
    "seed", "state", "attempt", "val_acc", "val_loss", "test_acc", "test_loss", "epochs_done",
    "wall_time_s", "samples_per_s", "infer_ms_per_batch", "parameters", "device", "versions", "commit",
    "config_hash", "error", "started", "finished", "run_id",
]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def shown_url(url: str) -> str:
    """``url`` as it may appear in messages and logs: its password masked."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, a busy timeout and foreign keys."""
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(
            f"--storage {shown_url(url)!r}: not a usable SQLAlchemy URL ({exc}); use e.g. sqlite:///kdbench.db "
            "or postgresql+psycopg://user@host/db (pip install 'kdbench[postgres]')"
        ) from None
    return engine


def retry_schema_race(create: Callable[[], T], attempts: int = 5) -> T:
    """Call ``create`` (which creates tables and rows if missing), again if it lost a race with another
    worker creating the same ones at the same moment.

    ``create_all`` checks, then creates: two workers starting together on a new database both see no
    table, and the slower one fails (SQLite: "table ... already exists"; PostgreSQL: a unique violation
    in its catalog, or on a version row). By the next try the tables are there.
    """
    for attempt in range(attempts):
        try:
            return create()
        except DBAPIError as exc:
            if attempt == attempts - 1 or not (isinstance(exc, IntegrityError) or "already exists" in str(exc)):
                raise
            time.sleep(SCHEMA_RETRY_S * (attempt + 1))
    raise AssertionError("unreachable")


class Store:
    """The kdbench tables in one database. Create with :meth:`open`."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = shown_url(url)  # for messages; the engine holds the real one
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str = DEFAULT_STORAGE, *, create: bool = True) -> Store:
        """Connect, create kdbench's tables if asked, and check the schema version.

        Raises:
            StoreError: unreachable database, or one written by a newer kdbench.
        """
        engine = make_engine(url)
        shown = shown_url(url)

        def prepare() -> None:
            with engine.begin() as conn:
                if create:
                    Base.metadata.create_all(conn)
                elif not sa.inspect(conn).has_table(MetaRow.__tablename__):
                    raise StoreError(f"--storage {shown}: no kdbench results in this database; run kdbench sweep")
                row = conn.execute(sa.select(MetaRow.value).where(MetaRow.key == "schema_version")).scalar()
                if row is None:
                    conn.execute(sa.insert(MetaRow).values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(row) > SCHEMA_VERSION:
                    raise StoreError(
                        f"--storage {shown}: written by a newer kdbench (schema {row}, this one reads up to "
                        f"{SCHEMA_VERSION}); upgrade kdbench (pip install -U kdbench)"
                    )

        try:
            retry_schema_race(prepare)
        except DBAPIError as exc:  # unreachable, refused, not a database, ...
            fix = "check the path (a SQLite file in a writable folder that exists)" if url.startswith("sqlite") else \
                "check the URL, that the server is up and the user may connect"
            raise StoreError(f"--storage {shown}: cannot open the database ({_first_line(exc)}); {fix}") from None
        return cls(url, engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose block is one transaction (committed on success, rolled back on error)."""
        with self._sessions.begin() as s:
            yield s

    def study(self, name: str) -> StudyRow | None:
        with self.session() as s:
            return s.scalar(sa.select(StudyRow).where(StudyRow.name == name))

    def studies(self) -> pd.DataFrame:
        """One row per study with counts of runs by state."""
        with self.engine.connect() as conn:
            studies = pd.read_sql(sa.select(StudyRow.id, StudyRow.name, StudyRow.config_hash, StudyRow.created),
                                  conn)
            counts = pd.read_sql(
                sa.select(RunRow.study_id, RunRow.state, sa.func.count().label("n"))
                .group_by(RunRow.study_id, RunRow.state), conn)
        if studies.empty:
            return studies
        wide = counts.pivot_table(index="study_id", columns="state", values="n", fill_value=0)
        out = studies.merge(wide, left_on="id", right_index=True, how="left").fillna(0)
        for col in ("complete", "pruned", "failed", "running", "interrupted"):
            out[col] = out[col].astype(int) if col in out else 0
        return out.drop(columns=["id"]).sort_values("name").reset_index(drop=True)

    def runs(self, study: str) -> pd.DataFrame:
        """Every run of ``study``, one row each, with provenance (see ``RUN_COLUMNS``)."""
        row = self.study(study)
        if row is None:
            known = ", ".join(self.studies().get("name", pd.Series(dtype=str))) or "none"
            raise StoreError(f"no study named {study!r} in {self.url} (studies there: {known})")
        cols = [getattr(RunRow, c) for c in RUN_COLUMNS if c not in ("study", "run_id")]
        with self.engine.connect() as conn:
            df = pd.read_sql(sa.select(RunRow.id.label("run_id"), *cols)
                             .where(RunRow.study_id == row.id).order_by(RunRow.id), conn)
        df.insert(0, "study", study)
        return df[RUN_COLUMNS]

    def epochs(self, study: str) -> pd.DataFrame:
        """Per-epoch curves of every run of ``study`` (joined with the run's visit, kind and loss)."""
        row = self.study(study)
        if row is None:
            raise StoreError(f"no study named {study!r} in {self.url}")
        q = (sa.select(RunRow.id.label("run_id"), RunRow.visit, RunRow.kind, RunRow.loss, RunRow.seed,
                       RunRow.rank, EpochRow.epoch, EpochRow.train_loss, EpochRow.val_acc, EpochRow.val_loss,
                       EpochRow.seconds, EpochRow.lr)
             .join(EpochRow, EpochRow.run_id == RunRow.id)
             .where(RunRow.study_id == row.id).order_by(RunRow.id, EpochRow.epoch))
        with self.engine.connect() as conn:
            return pd.read_sql(q, conn)

    def teacher(self, key: str) -> TeacherRow | None:
        with self.session() as s:
            return s.scalar(sa.select(TeacherRow).where(TeacherRow.key == key))


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc)) or type(exc).__name__
    return text.strip().splitlines()[0]


def load_runs(storage: str, study: str) -> pd.DataFrame:
    """Every run of a study as a DataFrame: one row per run, with T, alpha, lr, seed, state,
    accuracies, timings and provenance (device, library versions, kdbench commit, config hash).

    Args:
        storage: a SQLAlchemy URL, e.g. ``sqlite:///kdbench.db``.
        study: the study's name.
    """
    df = Store.open(storage, create=False).runs(study)
    df["versions"] = df["versions"].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return df
