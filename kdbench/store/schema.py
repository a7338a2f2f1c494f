"""kdbench's tables, beside Optuna's in the same database (ours carry a ``kdbench_`` prefix).

A study row holds the resolved config and its hash; a run row is one attempt at one planned visit
(a KD or CE search trial, or a finalist seed); an epoch row is one point of a run's curve; a teacher
row records a cached teacher. The unique (study, visit) constraint is what makes claims exclusive.
The column ``kdbench_runs.kind`` holds a visit's *stage* (kd, ce or finalist); the name is kept so
that databases written by earlier kdbench versions read unchanged. A study row's ``uid`` is its identity
across time: SQLite gives a new row the id of a deleted one, so a study dropped by ``--replace`` and the
study that replaced it may share an id, never a uid.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "NAME_LENGTH",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "Base",
    "EpochRow",
    "Gaps",
    "MetaRow",
    "RunRow",
    "StudyRow",
    "TeacherRow",
    "missing_columns",
    "now",
    "schema_gaps",
    "upgrade",
]

# Schema 2 added nullable columns only (:func:`upgrade` adds them to a schema-1 database):
# kdbench_studies.data_fingerprint, kdbench_runs.params, kdbench_runs.test_logits, kdbench_teachers.test_logits; then
# kdbench_runs.budget, then kdbench_runs.calib_temperature. Still schema 2, because a kdbench of schema 2 reads and
# writes the result as before (so workers of both may share a database; an older kdbench refuses a higher number):
# kdbench_studies.uid (nullable, a unique index where set), and kdbench_runs.kind and .loss widened from VARCHAR(16)
# and VARCHAR(8) to VARCHAR(64) (a method's name longer than 8 characters; SQLite never enforced the old lengths,
# PostgreSQL did). Then kdbench_epochs.steps (student.eval_every: several points per epoch, numbered in .epoch).
# Raise the number only for a change that an older kdbench could not read or write.
SCHEMA_VERSION = 2
NAME_LENGTH = 64  # characters of a method's or a stage's name (kdbench_runs.kind and .loss)


def now() -> dt.datetime:
    """The current UTC time, naive (as every timestamp column stores it)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of kdbench's tables."""


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
    created: Mapped[dt.datetime] = mapped_column(default=now)
    commit: Mapped[str] = mapped_column(sa.String(64), default="unknown")
    # what the data are (kdbench.data.Data.fingerprint): data.root is not in the config hash, so two image
    # folders under one config are told apart here (schema 2; None in studies stored before)
    data_fingerprint: Mapped[str | None] = mapped_column(sa.String(32))
    # secrets.token_hex(16), set when the row is created and never reused (the id may be: see above); None in
    # rows stored before it was kept. Unique where set (a unique index: SQLite cannot add a UNIQUE column)
    uid: Mapped[str | None] = mapped_column(sa.String(32), unique=True, index=True)


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
    test_logits: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # float16 [test, classes] (schema 2)
    created: Mapped[dt.datetime] = mapped_column(default=now)


class RunRow(Base):
    """One training run: a KD or CE search trial, a finalist seed, or a probe (stage ``probe``)."""

    __tablename__ = "kdbench_runs"
    __table_args__ = (sa.UniqueConstraint("study_id", "visit", name="uq_kdbench_runs_visit"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("kdbench_studies.id", ondelete="CASCADE"), index=True)
    visit: Mapped[str] = mapped_column(sa.String(200))  # the planned visit this run fulfils
    kind: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))  # the stage: a method (kd, dkd, ...) | ce | finalist
    loss: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))  # ce or the method: kd | dkd | dist | lskd | ...
    rank: Mapped[int | None]  # finalists: 0 = best configuration of its loss
    optuna_study: Mapped[str | None] = mapped_column(sa.String(200))
    trial_number: Mapped[int | None]
    trial_id: Mapped[int | None]
    temperature: Mapped[float | None]
    alpha: Mapped[float | None]
    lr: Mapped[float | None]
    params: Mapped[str | None] = mapped_column(sa.Text)  # JSON: a method's other hyperparameters (schema 2)
    budget: Mapped[str | None] = mapped_column(sa.String(32))  # what it trained for: "3 epochs", "200 steps"
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
    test_logits: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # finalists: float16 [test, classes] (schema 2)
    calib_temperature: Mapped[float | None]  # finalists: softmax temperature fitted on validation NLL
    started: Mapped[dt.datetime | None]
    finished: Mapped[dt.datetime | None]


class EpochRow(Base):
    __tablename__ = "kdbench_epochs"
    __table_args__ = (sa.UniqueConstraint("run_id", "epoch", name="uq_kdbench_epochs"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("kdbench_runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]  # the point's number along its run: the epoch, or with student.eval_every the point's
    steps: Mapped[int | None]  # optimiser steps taken by the point (None in rows stored before it was kept)
    train_loss: Mapped[float | None]
    val_acc: Mapped[float | None]
    val_loss: Mapped[float | None]
    seconds: Mapped[float]
    lr: Mapped[float | None]


RUN_COLUMNS = [
    "study", "visit", "kind", "loss", "rank", "optuna_study", "trial_number", "temperature", "alpha", "lr",
    "params", "budget", "seed", "state", "attempt", "val_acc", "val_loss", "test_acc", "test_loss", "epochs_done",
    "wall_time_s", "samples_per_s", "infer_ms_per_batch", "parameters", "device", "versions", "commit",
    "config_hash", "error", "started", "finished", "run_id",
]


@dataclass
class Gaps:
    """What a database lacks of kdbench's schema: what :func:`upgrade` changes. False when it lacks nothing."""

    columns: list[tuple[str, sa.Column[Any]]] = field(default_factory=list)  # (table, column) to add
    narrow: list[tuple[str, sa.Column[Any], Any]] = field(default_factory=list)  # (table, column, type found)
    indexes: list[sa.Index] = field(default_factory=list)  # to create

    def __bool__(self) -> bool:
        return bool(self.columns or self.narrow or self.indexes)


def schema_gaps(conn: sa.Connection) -> Gaps:
    """What this database's kdbench tables lack: columns, the width of string columns, indexes.

    A string column declared shorter than kdbench's (a method name in ``VARCHAR(8)``) is a gap only where the
    database enforces the length: never on SQLite, which stores any length whatever the declared type says.
    """
    inspector = sa.inspect(conn)
    lengths_count = conn.dialect.name != "sqlite"
    gaps = Gaps()
    for table in Base.metadata.sorted_tables:
        have = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            found = have.get(column.name)
            if found is None:
                gaps.columns.append((table.name, column))
                continue
            want, got = getattr(column.type, "length", None), getattr(found, "length", None)
            if lengths_count and want is not None and got is not None and got < want:
                gaps.narrow.append((table.name, column, found))
        indexed = {i["name"] for i in inspector.get_indexes(table.name)}
        gaps.indexes += [index for index in table.indexes if index.name not in indexed]
    return gaps


def missing_columns(conn: sa.Connection) -> list[tuple[str, sa.Column[Any]]]:
    """kdbench's columns this database's tables lack, as (table, column): what :func:`upgrade` would add."""
    return schema_gaps(conn).columns


def upgrade(engine: Engine) -> None:
    """Bring a database written by an earlier kdbench to :data:`SCHEMA_VERSION`: fill its :func:`schema_gaps`.

    Every change since schema 1 is a new nullable column, an index, or a wider string column (listed above
    :data:`SCHEMA_VERSION`), so no stored row is touched: old runs read with the new columns empty. What is
    changed is decided by what the database has, not by the version number alone. The changes are made with
    alembic's operations in one transaction (PostgreSQL; SQLite adds columns and indexes in place, and has no
    length to widen); a worker that races another to it finds them made on its retry
    (:func:`kdbench.store.db.retry_schema_race`), or, widening, waits for the other's lock and widens again.
    """
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    with engine.begin() as conn:
        ops = Operations(MigrationContext.configure(conn))
        gaps = schema_gaps(conn)
        for table, column in gaps.columns:
            assert column.nullable, f"{table}.{column.name}: a new column must be nullable"
            ops.add_column(table, sa.Column(column.name, column.type, nullable=True))
        for table, column, found in gaps.narrow:
            ops.alter_column(table, column.name, type_=column.type, existing_type=found,
                             existing_nullable=column.nullable)
        for index in gaps.indexes:
            ops.create_index(index.name, index.table.name, [c.name for c in index.columns],  # type: ignore[union-attr]
                             unique=bool(index.unique))
        conn.execute(sa.update(MetaRow).where(MetaRow.key == "schema_version").values(value=str(SCHEMA_VERSION)))
