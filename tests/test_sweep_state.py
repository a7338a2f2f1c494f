"""One owner per kind of state, through the CLI: a --replace leaves only the new study's Optuna studies, a
complete run's Optuna trial left RUNNING is closed by the next sweep, a huge grid is refused before anything is
stored, and a dropped study's reused id is never written into."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import stop_outside_a_write

from kdbench import cli
from kdbench.config import parse_study
from kdbench.store import Store


def _methods_study(tmp_path: Path, raw: dict, nckd: list[float]) -> Path:
    raw = dict(raw, search=dict(raw["search"], method=["kd", "dkd"], temperature=[2, 4],
                                spaces={"dkd": {"temperature": 4.0, "nckd_weight": nckd}}),
               finalists={"top_k": 1, "seeds": 1})
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(path: Path, db_url: str, tmp_path: Path, *extra: str) -> object:
    return CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", db_url, "--device", "cpu", "--threads", "1",
                                         "--cache-dir", str(tmp_path / "cache"), *extra])


def _optuna_studies(db_url: str) -> dict[str, int]:
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(db_url, include_best_trial=False)}


@pytest.mark.slow
def test_replace_of_a_methods_study_leaves_only_the_new_optuna_studies(
        small_study_dict: dict, db_url: str, tmp_path: Path) -> None:
    path = _methods_study(tmp_path, small_study_dict, [8.0, 2.0])
    res = _sweep(path, db_url, tmp_path, "--max-visits", "7")
    assert res.exit_code == 0, res.output
    assert set(_optuna_studies(db_url)) == {"tiny", "tiny.ce", "tiny.dkd"}
    # another space for dkd with as many cells: the dropped study's tiny.dkd must not survive (Optuna would refuse
    # "CategoricalDistribution does not support dynamic value space")
    path = _methods_study(tmp_path, small_study_dict, [1.0, 0.5])
    res = _sweep(path, db_url, tmp_path, "--replace", "--max-visits", "2")
    assert res.exit_code == 0, res.output
    after = _optuna_studies(db_url)
    assert set(after) <= {"tiny", "tiny.ce", "tiny.dkd"}
    assert sum(after.values()) == 2  # only the new sweep's two trials: nothing of the dropped study's five
    runs = Store.open(db_url).runs("tiny")
    assert len(runs) == 2 and set(runs["state"]) == {"complete"}


@pytest.mark.slow
def test_a_complete_run_whose_optuna_trial_is_running_is_closed_by_the_next_sweep(
        small_study_dict: dict, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))
    assert _sweep(path, db_url, tmp_path, "--max-visits", "1").exit_code == 0
    storage = optuna.storages.RDBStorage(db_url)
    run = Store.open(db_url).runs("tiny").iloc[0]
    assert run["state"] == "complete"
    trial = optuna.load_study(study_name=run["optuna_study"], storage=storage).trials[int(run["trial_number"])]
    with storage.engine.begin() as conn:  # what a tell lost under load leaves: the run complete, its trial RUNNING
        conn.exec_driver_sql("UPDATE trials SET state = 'RUNNING', datetime_complete = NULL WHERE trial_id = ?",
                             (trial._trial_id,))
        conn.exec_driver_sql("DELETE FROM trial_values WHERE trial_id = ?", (trial._trial_id,))
    states = [t.state for t in optuna.load_study(study_name=run["optuna_study"], storage=storage).trials]
    assert optuna.trial.TrialState.RUNNING in states
    assert _sweep(path, db_url, tmp_path, "--max-visits", "1").exit_code == 0
    repaired = optuna.load_study(study_name=run["optuna_study"], storage=storage).trials[int(run["trial_number"])]
    assert repaired.state == optuna.trial.TrialState.COMPLETE and repaired.value == pytest.approx(run["val_acc"])


def test_a_huge_grid_is_refused_before_anything_is_stored(tmp_path: Path, db_url: str) -> None:
    raw = {"name": "huge", "search": {"temperature": list(range(1, 3001)), "alpha": [i / 100 for i in range(99)],
                                      "lr": [1e-4 * (i + 1) for i in range(100)]}}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = _sweep(path, db_url, tmp_path)
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "search.max_visits" in line and "89,100,300 visits" in line, line
    assert not (tmp_path / "kdbench.db").exists() and not (tmp_path / "cache").exists()
    # the limit is the user's to raise; at its default no stored hash moves
    assert parse_study(dict(raw, search=dict(raw["search"], max_visits=10**8))).search_visits == 89_100_300
    assert parse_study({"name": "fashion-mnist-quick"}).hash == parse_study(
        {"name": "fashion-mnist-quick", "search": {"max_visits": 100_000}}).hash


def test_a_claim_in_a_dropped_study_whose_id_is_reused_is_refused(tmp_path: Path) -> None:
    from kdbench.errors import StoreError
    from kdbench.sweep.plan import plan_search

    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store.open(url)
    study = parse_study({"name": "r", "search": {"temperature": [2], "alpha": [0.5], "lr": [1e-3], "replicates": 1}})
    old = store.register_study(study)
    visit = plan_search(study)[0]
    assert store.claim(old.id, visit, 0, study.hash, 60.0, old.uid) is not None
    store.drop_study("r")
    new = store.register_study(study)
    assert new.id == old.id and new.uid != old.uid  # SQLite reuses the id; the uid is never reused
    with pytest.raises(StoreError, match="dropped or replaced"):
        store.claim(old.id, plan_search(study)[1], 1, study.hash, 60.0, old.uid)
    assert store.runs("r").empty


@pytest.mark.slow
def test_replace_stops_a_worker_of_the_dropped_study_and_keeps_its_writes_out(
        small_study_dict: dict, tmp_path: Path) -> None:
    """A worker still training when another process runs ``--replace`` with another config stops with one line
    (no traceback), and nothing it wrote after the drop lands in the new study: every run there is the new
    config's (the SQLite id of the dropped study is reused; its uid is not)."""
    import signal
    import subprocess
    import sys
    import time

    db = f"sqlite:///{tmp_path / 'kd.db'}"
    raw = dict(small_study_dict, student=dict(small_study_dict["student"], steps=150),
               search=dict(small_study_dict["search"], temperature=[1, 2, 4, 8], alpha=[0.3, 0.7], replicates=2))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    args = [sys.executable, "-m", "kdbench", "sweep", str(path), "--storage", db, "--device", "cpu", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]

    def mid_visit() -> bool:  # the old worker has finished a run of its own and is training another
        store = Store.open(db) if (tmp_path / "kd.db").exists() else None  # the file comes before the study
        runs = store.runs("tiny") if store is not None and store.study("tiny") is not None else None
        return runs is not None and (runs["state"] == "complete").any() and (runs["state"] == "running").any()

    old = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # then held there (stopped outside a write) while --replace runs
            if mid_visit():
                stop_outside_a_write(old.pid, db)
                if mid_visit():
                    break
                old.send_signal(signal.SIGCONT)
            assert old.poll() is None, old.communicate()
            time.sleep(0.1)
        else:
            raise AssertionError("the old worker was never seen mid-visit")
        new = subprocess.run([*args, "--replace", "--set", "student.steps=20", "--max-visits", "2"],
                             capture_output=True, text=True, timeout=300)
        old.send_signal(signal.SIGCONT)
        assert new.returncode == 0, new.stderr
        _, err = old.communicate(timeout=300)
    finally:
        old.kill()
    assert old.returncode == 2, err
    assert "Traceback" not in err and "dropped or replaced" in err.strip().splitlines()[-1], err
    new_hash = parse_study(raw, overrides=["student.steps=20"]).hash
    runs = Store.open(db).runs("tiny")
    assert len(runs) >= 2 and set(runs["config_hash"]) == {new_hash}, runs[["visit", "state", "config_hash"]]
