"""Every read of kdbench's tables, as rows or DataFrames: studies, runs, epochs, teachers, finalists.

:class:`Queries` is one half of :class:`kdbench.store.Store` (the other, :class:`~kdbench.store.claims.Claims`,
writes). Nothing here changes the database.

pandas is imported by the reads that return DataFrames, not by this module: a sweep worker reads plain rows
(:meth:`Queries.run_states`, :meth:`Queries.run_records`) and never pays pandas' ~95 MiB (pyarrow included).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from kdbench.errors import ConfigError, StoreError, first_line
from kdbench.store.db import Database
from kdbench.store.keys import PARAM_COLUMNS
from kdbench.store.schema import RUN_COLUMNS, EpochRow, RunRow, StudyRow, TeacherRow
from kdbench.studyfile import stored_study

if TYPE_CHECKING:
    import pandas as pd

    from kdbench.config import Study  # not at run time: the schema imports torch (kdbench.losses' registry)

__all__ = ["FINALIST_COLUMNS", "Queries", "RunRecord", "is_unset", "load_runs", "params_json", "run_records",
           "run_values"]

RunRecord = Mapping[str, Any]  # one run: its RUN_COLUMNS (or some of them) by name, None or NaN where unset

FINALIST_COLUMNS = ["loss", "rank", "temperature", "alpha", "lr", "params", "test_mean", "test_sd", "n", "val_mean",
                    "runs"]  # n: the test accuracies behind mean and sd; runs: complete runs, with one or not
# what to do about a study row whose config cannot be read
_DAMAGED_FIX = "run its study file again with kdbench sweep ... --replace, or restore the database from a backup"
_POSSIBLE = {  # column of a run: the values it can hold (NaN aside), and what such a value is
    "val_acc": (0.0, 1.0, "an accuracy (a fraction in [0, 1])"),
    "test_acc": (0.0, 1.0, "an accuracy (a fraction in [0, 1])"),
    "val_loss": (0.0, math.inf, "a cross-entropy (0 or more)"),
    "test_loss": (0.0, math.inf, "a cross-entropy (0 or more)"),
    "epochs_done": (0, math.inf, "a count of epochs (0 or more)"),
    "wall_time_s": (0.0, math.inf, "a duration in seconds (0 or more)"),
}


def params_json(values: dict[str, float]) -> str | None:
    """The ``params`` column of a run: its parameters beyond :data:`PARAM_COLUMNS`, as sorted JSON (None: none)."""
    extra = {k: float(v) for k, v in values.items() if k not in PARAM_COLUMNS}
    return json.dumps(extra, sort_keys=True) if extra else None


def is_unset(value: Any) -> bool:
    """A value a run does not have: None (a plain row) or NaN (a DataFrame's row)."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def run_records(runs: pd.DataFrame | Iterable[RunRecord]) -> list[RunRecord]:
    """Runs as plain rows: :meth:`Queries.run_records`' as they are, a DataFrame's (:meth:`Queries.runs`) one
    mapping per row, so that the sweep's planning reads either without importing pandas itself."""
    to_dict = getattr(runs, "to_dict", None)
    return to_dict("records") if to_dict is not None else list(runs)


def run_values(row: Any) -> dict[str, float]:
    """Every parameter of a run (a row of :meth:`Queries.runs` or :meth:`Queries.run_records`, or of the finalist
    summary): T, alpha and lr where set, then the method's others from ``params``."""
    out = {k: float(row[k]) for k in PARAM_COLUMNS if k in row and not is_unset(row[k])}
    extra = row.get("params")
    if isinstance(extra, str) and extra:
        out.update({k: float(v) for k, v in json.loads(extra).items()})
    return out


class Queries(Database):
    """The reads of the store."""

    def study(self, name: str) -> StudyRow | None:
        """The study's row, or None."""
        with self.session() as s:
            return s.scalar(sa.select(StudyRow).where(StudyRow.name == name))

    def study_names(self) -> list[str]:
        """The names of the studies stored, sorted (a plain read: no pandas, for a worker's messages)."""
        with self.connect() as conn:
            return sorted(conn.execute(sa.select(StudyRow.name)).scalars())

    def _study_row(self, name: str) -> StudyRow:
        row = self.study(name)
        if row is None:
            known = ", ".join(self.study_names()) or "none"
            raise StoreError(f"no study named {name!r} in {self.url} (studies there: {known})")
        return row

    def stored_config(self, name: str) -> dict[str, Any]:
        """The study's stored config as plain JSON data, as its sweep resolved it (keys an earlier kdbench
        wrote included: the report reads those studies too). :meth:`study_config` validates it.

        Raises:
            StoreError: no such study (the message lists the studies there), or its stored config is not a
                JSON object (a damaged row).
        """
        row = self._study_row(name)
        try:
            raw = json.loads(row.config)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"study {name!r} in {self.url}: its stored config is not JSON ({first_line(exc)}); "
                             f"{_DAMAGED_FIX}") from None
        if not isinstance(raw, dict):
            got = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(raw), "a number")
            raise StoreError(f"study {name!r} in {self.url}: its stored config is JSON but not an object of keys "
                             f"({got}); {_DAMAGED_FIX}")
        return raw

    def study_config(self, name: str) -> Study:
        """The study's stored config, parsed into the typed study (every key validated, as a study file is).

        Raises:
            StoreError: no such study (the message lists the studies there), or its stored config is not JSON
                or not a study this kdbench reads (a damaged row, or keys only an earlier kdbench knew).
        """
        try:
            return stored_study(self.stored_config(name))
        except ConfigError as exc:
            raise StoreError(f"study {name!r} in {self.url}: its stored config is not a study this kdbench reads "
                             f"({first_line(exc)}); {_DAMAGED_FIX}") from None

    def study_uid(self, study_id: int) -> str | None:
        """The uid of study row ``study_id``: an identity never reused, unlike the id (None: a row stored
        before uids were kept).

        Raises:
            StoreError: no study has that id now (it was dropped, e.g. by ``kdbench sweep --replace``).
        """
        with self.connect() as conn:
            found = conn.execute(sa.select(StudyRow.uid).where(StudyRow.id == study_id)).one_or_none()
        if found is None:
            raise StoreError(f"study id {study_id} in {self.url}: no such study now (dropped, e.g. by "
                             "kdbench sweep --replace)")
        return found.uid

    def studies(self) -> pd.DataFrame:
        """One row per study with counts of runs by state."""
        import pandas as pd

        with self.connect() as conn:
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
        """Every run of ``study``, one row each, with provenance (see ``RUN_COLUMNS``).

        Raises:
            StoreError: no such study (the message lists the studies there).
        """
        import pandas as pd

        query = self._runs_query(study)
        with self.connect() as conn:
            df = pd.read_sql(query, conn)
        df.insert(0, "study", study)
        self._refuse_impossible(study, df, list(_POSSIBLE))
        return df[RUN_COLUMNS]

    def run_records(self, study: str) -> list[dict[str, Any]]:
        """:meth:`runs` as plain rows (dicts of ``RUN_COLUMNS``, None where unset), read without pandas: what a
        sweep worker plans its lr extension and finalists from.

        Raises:
            StoreError: no such study (the message lists the studies there), or a damaged row (as :meth:`runs`).
        """
        query = self._runs_query(study)
        with self.connect() as conn:
            rows = [{"study": study, **r._asdict()} for r in conn.execute(query)]
        for col, (low, high, what) in _POSSIBLE.items():  # as runs() checks: a text read as no number
            for r in rows:
                if isinstance(r[col], int | float) and not is_unset(r[col]) and not low <= r[col] <= high:
                    self._damaged(study, r, col, what)
        return [{c: r[c] for c in RUN_COLUMNS} for r in rows]

    def _runs_query(self, study: str) -> sa.Select[Any]:
        """Every run of ``study`` with ``RUN_COLUMNS`` but ``study``, in id order (raises for an unknown study)."""
        row = self._study_row(study)
        cols = [getattr(RunRow, c) for c in RUN_COLUMNS if c not in ("study", "run_id")]
        return sa.select(RunRow.id.label("run_id"), *cols).where(RunRow.study_id == row.id).order_by(RunRow.id)

    def _refuse_impossible(self, study: str, df: pd.DataFrame, columns: list[str]) -> None:
        """A possible value or nothing in each of ``columns`` (of :data:`_POSSIBLE`): else a damaged row."""
        import pandas as pd

        for col in columns:
            low, high, what = _POSSIBLE[col]
            values = pd.to_numeric(df[col], errors="coerce")  # a column of NULLs reads as objects
            bad = df[values.notna() & ~values.between(low, high)]
            if len(bad):
                self._damaged(study, bad.iloc[0], col, what)

    def _damaged(self, study: str, r: Any, col: str, what: str) -> None:
        """Refuse a run whose ``col`` holds a value it cannot hold: a damaged row."""
        raise StoreError(f"study {study!r} in {self.url}: run {int(r['run_id'])} ({r['visit']}) has "
                         f"{col} = {float(r[col]):g}, not {what}; {_DAMAGED_FIX}")

    def run_states(self, study_id: int) -> list[sa.Row[Any]]:
        """(visit, kind, state, val_acc, epochs_done) of every run of a study: the cheap read a worker makes
        between trials (claiming, progress), without the provenance columns or pandas."""
        with self.connect() as conn:
            return list(conn.execute(
                sa.select(RunRow.visit, RunRow.kind, RunRow.state, RunRow.val_acc, RunRow.epochs_done)
                .where(RunRow.study_id == study_id).order_by(RunRow.id)))

    def epochs(self, study: str) -> pd.DataFrame:
        """Per-epoch curves of every run of ``study`` (joined with the run's visit, kind and loss): a row per
        evaluation point, ``epoch`` its number along the run, ``steps`` the optimiser steps by then (None before
        it was kept)."""
        import pandas as pd

        row = self.study(study)
        if row is None:
            raise StoreError(f"no study named {study!r} in {self.url}")
        q = (sa.select(RunRow.id.label("run_id"), RunRow.visit, RunRow.kind, RunRow.loss, RunRow.seed,
                       RunRow.rank, EpochRow.epoch, EpochRow.steps, EpochRow.train_loss, EpochRow.val_acc,
                       EpochRow.val_loss, EpochRow.seconds, EpochRow.lr)
             .join(EpochRow, EpochRow.run_id == RunRow.id)
             .where(RunRow.study_id == row.id).order_by(RunRow.id, EpochRow.epoch))
        with self.connect() as conn:
            df = pd.read_sql(q, conn)
        self._refuse_impossible(study, df, ["val_acc", "val_loss"])  # a point's, as a run's: the curves read them
        return df

    def teacher(self, key: str) -> TeacherRow | None:
        """The teacher recorded under cache ``key``, or None."""
        with self.session() as s:
            return s.scalar(sa.select(TeacherRow).where(TeacherRow.key == key))

    def study_teacher(self, name: str) -> TeacherRow | None:
        """The teacher a study distils from, once the sweep has recorded it."""
        row = self.study(name)
        return self.teacher(row.teacher_key) if row is not None and row.teacher_key else None

    def test_predictions(self, run_ids: list[int]) -> dict[int, bytes | None]:
        """The stored test-set predictions (int16 argmax) of these runs, by run id."""
        return self._blobs(RunRow.test_predictions, run_ids)

    def test_logits(self, run_ids: list[int]) -> dict[int, bytes | None]:
        """The stored test-set logits (float16, finalists; None before schema 2) of these runs, by run id."""
        return self._blobs(RunRow.test_logits, run_ids)

    def calib_temperatures(self, run_ids: list[int]) -> dict[int, float]:
        """The softmax temperatures fitted on validation (finalists recorded since they were kept), by run id."""
        with self.session() as s:
            rows = s.execute(sa.select(RunRow.id, RunRow.calib_temperature).where(RunRow.id.in_(run_ids))).all()
        return {run_id: t for run_id, t in rows if t is not None}

    def _blobs(self, column: Any, run_ids: list[int]) -> dict[int, bytes | None]:
        with self.session() as s:
            return dict(s.execute(sa.select(RunRow.id, column).where(RunRow.id.in_(run_ids))).all())

    def trial_links(self, study_id: int) -> list[Any]:
        """``(trial_id, state, val_acc, error)`` of the study's runs that are linked to an Optuna trial."""
        with self.connect() as conn:
            return list(conn.execute(sa.select(RunRow.trial_id, RunRow.state, RunRow.val_acc, RunRow.error)
                                     .where(RunRow.study_id == study_id, RunRow.trial_id.is_not(None))).all())

    def finalist_summary(self, name: str) -> pd.DataFrame:
        """Test accuracy of each finalist configuration over its seeds: mean, sd, n (see ``FINALIST_COLUMNS``).

        The one summary of the finalists: ``kdbench sweep``, ``kdbench show`` and the report all print it.
        """
        import pandas as pd

        runs = self.runs(name)
        fin = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete")]
        if fin.empty:
            return pd.DataFrame(columns=FINALIST_COLUMNS)
        g = fin.groupby(["loss", "rank"], dropna=False)
        out = g.agg(temperature=("temperature", "first"), alpha=("alpha", "first"), lr=("lr", "first"),
                    params=("params", "first"),
                    test_mean=("test_acc", "mean"), test_sd=("test_acc", lambda x: float(np.std(x.dropna(), ddof=1))
                                                             if x.notna().sum() > 1 else math.nan),
                    n=("test_acc", "count"), val_mean=("val_acc", "mean"), runs=("test_acc", "size")).reset_index()
        order = out["loss"].map(lambda m: (m != "kd", m in ("ce", "ce_ls"), m))  # KD, the other methods, CE, CE+LS
        out = out.assign(_order=order).sort_values(["_order", "rank"]).drop(columns="_order")
        return out[FINALIST_COLUMNS].reset_index(drop=True)


def load_runs(storage: str, study: str) -> pd.DataFrame:
    """Every run of a study as a DataFrame: one row per run, with T, alpha, lr, seed, state,
    accuracies, timings and provenance (device, library versions, kdbench commit, config hash).

    Args:
        storage: a SQLAlchemy URL, e.g. ``sqlite:///kdbench.db``.
        study: the study's name.
    """
    df = Queries.open(storage, create=False).runs(study)
    df["versions"] = df["versions"].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return df
