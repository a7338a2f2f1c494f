"""The store: the one owner of kdbench's tables, beside Optuna's in one SQLAlchemy database.

``schema.py`` defines the tables; ``db.py`` turns a URL into an engine and an Optuna storage, once;
``claims.py`` holds every write (the exactly-once claim protocol, heartbeats, finishing a run);
``queries.py`` every read (runs, epochs, studies, the finalist summary) as DataFrames, and the few a sweep
worker makes as plain rows (it never imports pandas). Nothing outside this package writes kdbench's tables.
Open one :class:`Store` per process, at the edge (the CLI), and pass it down.
"""

from __future__ import annotations

from kdbench.defaults import DEFAULT_STORAGE
from kdbench.store.claims import Claimed, Claims, finite_or_none, pid_alive, worker_id
from kdbench.store.db import make_engine, retry_schema_race, shown_url
from kdbench.store.keys import (
    PARAM_COLUMNS,
    cell_key,
    config_key,
    config_name,
    finalist_key,
    probe_key,
    recheck_key,
    retired_key,
    search_key,
)
from kdbench.store.queries import (
    FINALIST_COLUMNS,
    Queries,
    RunRecord,
    is_unset,
    load_runs,
    params_json,
    run_records,
    run_values,
)
from kdbench.store.schema import RUN_COLUMNS, SCHEMA_VERSION, EpochRow, MetaRow, RunRow, StudyRow, TeacherRow, now

__all__ = [
    "DEFAULT_STORAGE",
    "FINALIST_COLUMNS",
    "PARAM_COLUMNS",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "Claimed",
    "EpochRow",
    "MetaRow",
    "RunRecord",
    "RunRow",
    "Store",
    "StudyRow",
    "TeacherRow",
    "cell_key",
    "config_key",
    "config_name",
    "finalist_key",
    "finite_or_none",
    "is_unset",
    "load_runs",
    "make_engine",
    "now",
    "params_json",
    "pid_alive",
    "probe_key",
    "recheck_key",
    "retired_key",
    "retry_schema_race",
    "run_records",
    "run_values",
    "search_key",
    "shown_url",
    "worker_id",
]


class Store(Queries, Claims):
    """kdbench's tables in one database: reads (:class:`Queries`) and writes (:class:`Claims`).

    Create with :meth:`open` (a URL) or :meth:`get` (a URL or an open store).
    """
