"""The store on every backend (SQLite, and PostgreSQL when a server is there): schema, claims, queries."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
import sqlalchemy as sa

from kdbench.config import parse_study
from kdbench.errors import StoreError
from kdbench.store import SCHEMA_VERSION, EpochRow, MetaRow, RunRow, Store, load_runs
from kdbench.sweep import Visit, claim, drop_study, optuna_storage, register_study


def _visit(key: str = "kd/T=2/a=0.5/r=0") -> Visit:
    return Visit(key, "kd", "kd", 0, temperature=2.0, alpha=0.5)


def test_open_checks_the_schema_version(storage: str) -> None:
    store = Store.open(storage)
    Store.open(storage)  # a second open (another worker) is fine
    with store.session() as s:
        s.execute(sa.update(MetaRow).where(MetaRow.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(StoreError, match=r"newer kdbench .*upgrade kdbench"):
        Store.open(storage)


def test_register_study_refuses_another_config(storage: str, tiny_study_dict: dict) -> None:
    store = Store.open(storage)
    study = parse_study(tiny_study_dict)
    row = register_study(store, study)
    assert register_study(store, study).id == row.id
    with pytest.raises(StoreError, match="--set name=tiny-2"):
        register_study(store, parse_study(tiny_study_dict, overrides=["student.epochs=2"]))


def test_claims_are_exclusive_and_taken_over(storage: str, tiny_study_dict: dict) -> None:
    store = Store.open(storage)
    study = parse_study(tiny_study_dict)
    sid = register_study(store, study).id
    # eight threads race for one visit: exactly one wins, the rest see it taken
    with ThreadPoolExecutor(8) as pool:
        won = [r for r in pool.map(lambda _: claim(store, sid, _visit(), study.hash, 60.0), range(8)) if r]
    assert len(won) == 1 and won[0].state == "running" and won[0].attempt == 1
    assert claim(store, sid, _visit(), study.hash, 60.0) is None  # held by a live worker (this process)
    # a worker on another host that stopped beating: taken over once its heartbeat is stale
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=600)
    with store.session() as s:
        s.execute(sa.update(RunRow).where(RunRow.id == won[0].id).values(owner="elsewhere:1", heartbeat=old))
        s.add(EpochRow(run_id=won[0].id, epoch=0, seconds=1.0))
    assert claim(store, sid, _visit(), study.hash, 3600.0) is None
    again = claim(store, sid, _visit(), study.hash, 60.0)
    assert again is not None and again.id == won[0].id and again.attempt == 2 and "died" in (again.error or "")
    assert store.epochs("tiny").empty  # the dead attempt's epochs are gone
    # interrupted visits are claimed again; complete ones never
    with store.session() as s:
        s.execute(sa.update(RunRow).where(RunRow.id == again.id).values(state="interrupted"))
    third = claim(store, sid, _visit(), study.hash, 60.0)
    assert third is not None and third.attempt == 3
    with store.session() as s:
        s.execute(sa.update(RunRow).where(RunRow.id == third.id).values(state="complete"))
    assert claim(store, sid, _visit(), study.hash, 60.0) is None


def test_queries_and_drop(storage: str, tiny_study_dict: dict) -> None:
    store = Store.open(storage)
    study = parse_study(tiny_study_dict)
    sid = register_study(store, study).id
    run = claim(store, sid, _visit(), study.hash, 60.0)
    assert run is not None
    preds = bytes(range(20))
    with store.session() as s:
        s.execute(sa.update(RunRow).where(RunRow.id == run.id).values(
            state="complete", val_acc=0.5, versions='{"torch": "2.14.1"}', test_predictions=preds))
        s.add(EpochRow(run_id=run.id, epoch=0, train_loss=1.0, val_acc=0.5, seconds=0.1))
    runs = load_runs(storage, "tiny")
    assert list(runs["visit"]) == ["kd/T=2/a=0.5/r=0"] and runs.loc[0, "versions"] == {"torch": "2.14.1"}
    assert runs.loc[0, "temperature"] == 2.0 and runs.loc[0, "state"] == "complete"
    assert list(store.epochs("tiny")["val_acc"]) == [0.5]
    with store.session() as s:
        assert s.scalar(sa.select(RunRow.test_predictions)) == preds
    counts = store.studies()
    assert list(counts["name"]) == ["tiny"] and int(counts.loc[0, "complete"]) == 1
    ostorage = optuna_storage(storage)
    optuna.create_study(storage=ostorage, study_name="tiny")
    drop_study(store, "tiny", ostorage)
    assert store.studies().empty
    assert optuna.get_all_study_names(ostorage) == []
    with pytest.raises(StoreError, match="no study named 'tiny'"):
        load_runs(storage, "tiny")


def test_workers_starting_at_once_on_a_new_database(storage: str) -> None:
    # each worker opens kdbench's tables and Optuna's storage; on a new database they race to create them
    def start(_: int) -> int:
        Store.open(storage)
        optuna_storage(storage)
        return 1

    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(start, range(6))) == 6
    assert Store.open(storage).studies().empty
