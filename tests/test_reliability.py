"""Crash safety and many workers, on real processes, a real SQLite store and a real Fashion-MNIST subset.

Ctrl-C and SIGKILL mid-trial, racing workers, a non-finite loss, a crash inside a run's final write, and
Optuna's own CLI reading the study. The teacher is trained once per session into a shared cache.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from conftest import small_study_raw, stop_outside_a_write
from sqlalchemy.orm import Session

from kdbench.config import Study, parse_study
from kdbench.store import EpochRow, RunRow, Store, load_runs, now, worker_id
from kdbench.sweep import plan_search, planned_total, run_sweep, study_progress
from kdbench.teacher import prepare_teacher

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory, small_fmnist_npz: Path) -> Path:
    """The small study's teacher, trained once for every test here (the cache is keyed by content)."""
    cache = tmp_path_factory.mktemp("cache")
    study = parse_study(small_study_raw(small_fmnist_npz))
    prepare_teacher(study, cache_dir=cache)
    return cache


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # SIGINT as at a terminal, even when the test run itself was started in the background (`cmd &` from a
    # script starts with SIGINT ignored, and children inherit that)
    return subprocess.Popen([sys.executable, "-m", "kdbench", "sweep", *args, "--quiet"], text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _runs(db: str, name: str):
    try:
        return Store.open(db, create=False).runs(name)
    except Exception:  # not created yet
        return None


def _wait_mid_trial(proc: subprocess.Popen[str], db: str, name: str, min_complete: int) -> None:
    """Until the store shows ``min_complete`` complete runs and one running: the worker is mid-trial."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = _runs(db, name)
        if runs is not None and (runs["state"] == "complete").sum() >= min_complete \
                and (runs["state"] == "running").any():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the sweep never got mid-trial")


def _stop_mid_trial(proc: subprocess.Popen[str], db: str, name: str, min_complete: int) -> pd.DataFrame:
    """``proc`` stopped (SIGSTOP, outside a write) while the store shows ``min_complete`` complete runs and one
    running; returns the runs as they stand. A signal sent now lands inside that trial when the process is
    continued, however short its trials are (one seen running may have ended before the stop: then again)."""
    while True:
        _wait_mid_trial(proc, db, name, min_complete)
        stop_outside_a_write(proc.pid, db)
        runs = _runs(db, name)
        assert runs is not None
        if (runs["state"] == "running").any():
            return runs
        proc.send_signal(signal.SIGCONT)


def _signal_mid_trial(proc: subprocess.Popen[str], db: str, name: str, min_complete: int, sig: int) -> None:
    """Send ``sig`` to ``proc`` inside a trial (:func:`_stop_mid_trial`), then let it go on."""
    _stop_mid_trial(proc, db, name, min_complete)
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)


def _check_planned_set(db: str, study: Study) -> None:
    """Exactly one complete run per planned visit; retired attempts only as ``visit#n``; no orphans."""
    runs = load_runs(db, study.name)
    planned = runs[~runs["visit"].str.contains("#")]
    assert planned["visit"].is_unique and len(planned) == planned_total(study)
    assert set(planned["state"]) == {"complete"}
    assert {v.key for v in plan_search(study)} <= set(planned["visit"])
    store = Store.open(db)
    with store.engine.connect() as conn:
        epochs = dict(conn.execute(sa.select(EpochRow.run_id, sa.func.count()).group_by(EpochRow.run_id)).all())
        trial_ids = conn.execute(sa.select(RunRow.trial_id, RunRow.state).where(RunRow.trial_id.is_not(None))).all()
    for _, r in planned.iterrows():  # a complete run has all its epochs (written with it, in one transaction)
        assert epochs.get(r["run_id"], 0) == r["epochs_done"] >= 1
    fin = planned[planned["kind"] == "finalist"]
    assert fin["test_acc"].notna().all()
    storage = optuna.storages.RDBStorage(db)
    for tid, state in trial_ids:  # Optuna agrees with kdbench on every trial
        expected = {"complete": "COMPLETE", "pruned": "PRUNED"}.get(state, "FAIL")
        assert storage.get_trial(tid).state.name == expected


@pytest.mark.slow
def test_ctrl_c_then_resume_and_optuna_cli(
        small_fmnist_npz: Path, tmp_path: Path, db_url: str, teacher_cache: Path) -> None:
    study = parse_study(small_study_raw(small_fmnist_npz))
    path = _write(tmp_path, small_study_raw(small_fmnist_npz))
    proc = _sweep(str(path), "--storage", db_url, "--cache-dir", str(teacher_cache))
    _signal_mid_trial(proc, db_url, "tiny", 1, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Run the same command again to resume" in err and "Traceback" not in err
    runs = load_runs(db_url, "tiny")
    assert "running" not in set(runs["state"])  # the trial was ended cleanly, not left running
    run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    _check_planned_set(db_url, study)
    # Optuna's own CLI reads the study from the same database
    out = subprocess.run([Path(sys.executable).with_name("optuna"), "trials", "--study-name", "tiny",
                          "--storage", db_url, "-f", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    trials = json.loads(out.stdout)
    kd_runs = load_runs(db_url, "tiny").query("kind == 'kd' and trial_number.notna()", engine="python")
    linked = {int(n) for n in kd_runs["trial_number"]}
    # every completed trial belongs to a run; a trial the Ctrl-C cut off before kdbench recorded it is FAIL
    assert {t["number"] for t in trials if t["state"] == "COMPLETE"} <= linked
    assert all(t["state"] == "FAIL" for t in trials if t["number"] not in linked), trials
    assert sum(t["state"] == "COMPLETE" for t in trials) == len(plan_search(study)) - 1  # minus the CE visit
    # every run carries its provenance
    runs = load_runs(db_url, "tiny")
    for col in ("seed", "config_hash", "commit", "device", "versions", "started", "finished"):
        assert runs[col].notna().all(), col
    assert (runs["config_hash"] == study.hash).all() and runs["versions"].map(lambda v: "torch" in v).all()


@pytest.mark.slow
def test_sigkill_mid_trial_is_noticed_failed_and_rerun(
        small_fmnist_npz: Path, tmp_path: Path, db_url: str, teacher_cache: Path) -> None:
    study = parse_study(small_study_raw(small_fmnist_npz))
    path = _write(tmp_path, small_study_raw(small_fmnist_npz))
    rng = random.Random(0)
    kills = 0
    for _ in range(2):  # killed at random points, restarted each time
        proc = _sweep(str(path), "--storage", db_url, "--cache-dir", str(teacher_cache))
        before = (load_runs(db_url, "tiny")["state"] == "complete").sum() if kills else 0
        _stop_mid_trial(proc, db_url, "tiny", before + rng.randint(0, 2))
        proc.kill()
        proc.communicate()
        kills += 1
    run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    _check_planned_set(db_url, study)
    runs = load_runs(db_url, "tiny")
    dead = runs[runs["visit"].str.contains("#")]
    assert len(dead) == kills and set(dead["state"]) == {"failed"}
    assert dead["error"].str.contains("died").all()
    storage = optuna.storages.RDBStorage(db_url)
    with Store.open(db_url).engine.connect() as conn:
        tids = conn.execute(sa.select(RunRow.trial_id).where(RunRow.visit.contains("#"),
                                                             RunRow.trial_id.is_not(None))).scalars().all()
    for tid in tids:  # the dead attempts' Optuna trials are failed with the reason
        t = storage.get_trial(tid)
        assert t.state.name == "FAIL" and "died" in t.user_attrs["fail_reason"]


@pytest.mark.slow
def test_a_finalist_at_a_longer_budget_resumes_after_sigkill(small_fmnist_npz: Path, tmp_path: Path, db_url: str,
                                                             teacher_cache: Path) -> None:
    """Finalists and a probe trained for 10 epochs (the search: 1): killed mid-finalist, then resumed."""
    raw = small_study_raw(small_fmnist_npz)
    raw["finalists"] = {"top_k": 1, "seeds": 2, "budget": 10, "probe": 1}
    study = parse_study(raw)
    path = _write(tmp_path, raw)
    proc = _sweep(str(path), "--storage", db_url, "--cache-dir", str(teacher_cache))

    def mid_finalist(runs: pd.DataFrame | None) -> bool:  # a finalist running and past its first epoch
        return runs is not None and bool(((runs["kind"] == "finalist") & (runs["state"] == "running")
                                          & (runs["epochs_done"] >= 2)).any())

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if mid_finalist(_runs(db_url, "tiny")):
            stop_outside_a_write(proc.pid, db_url)  # still mid-finalist once stopped: killed there
            if mid_finalist(_runs(db_url, "tiny")):
                break
            proc.send_signal(signal.SIGCONT)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    else:
        raise AssertionError("no finalist was ever seen mid-training")
    proc.kill()
    proc.communicate()
    killed = load_runs(db_url, "tiny").query("state == 'running'")
    assert len(killed) == 1 and killed["budget"].iloc[0] == "10 epochs" and 2 <= killed["epochs_done"].iloc[0] < 10
    run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    _check_planned_set(db_url, study)
    runs = load_runs(db_url, "tiny")
    dead = runs[runs["visit"].str.contains("#")]
    assert list(dead["visit"]) == [f"{killed['visit'].iloc[0]}#1"] and set(dead["state"]) == {"failed"}
    planned = runs[~runs["visit"].str.contains("#")]
    longer = planned[planned["kind"].isin(["finalist", "probe"])]
    assert set(longer["budget"]) == {"10 epochs"} and set(longer["epochs_done"]) == {10}
    assert set(planned.loc[planned["kind"].isin(["kd", "ce"]), "budget"]) == {"1 epoch"}
    probes = planned[planned["kind"] == "probe"]
    assert len(probes) == 2 and probes["test_acc"].isna().all()  # probes are scored on validation only


def test_a_stale_heartbeat_on_another_host_is_taken_over(small_fmnist_npz: Path, db_url: str) -> None:
    study = parse_study(small_study_raw(small_fmnist_npz))
    store = Store.open(db_url)
    row = store.register_study(study)
    visit = plan_search(study)[0]
    first = store.claim(row.id, visit, 0, study.hash, stale_after_s=60)
    assert first is not None
    with store.session() as s:  # as if held by another live worker on this host (our parent process)
        host, _, ns, _ = worker_id().split(":")
        s.execute(sa.update(RunRow).where(RunRow.id == first.run_id).values(owner=f"{host}:{os.getppid()}:{ns}:x"))
    assert store.claim(row.id, visit, 0, study.hash, stale_after_s=60) is None
    with store.session() as s:  # its worker is on another machine and stopped beating an hour ago
        s.execute(sa.update(RunRow).where(RunRow.id == first.run_id).values(
            owner="elsewhere:1", heartbeat=now() - dt.timedelta(hours=1)))
    again = store.claim(row.id, visit, 0, study.hash, stale_after_s=60)
    assert again is not None and again.run_id != first.run_id and "no heartbeat" in (again.replaced_reason or "")
    runs = store.runs("tiny").set_index("visit")
    assert runs.loc[f"{visit.key}#1", "state"] == "failed" and runs.loc[visit.key, "attempt"] == 2


@pytest.mark.slow
def test_racing_workers_on_sqlite(small_fmnist_npz: Path, tmp_path: Path, db_url: str, teacher_cache: Path) -> None:
    """`--workers 2` and a separate `kdbench sweep` started together on a fresh database."""
    study = parse_study(small_study_raw(small_fmnist_npz))
    path = _write(tmp_path, small_study_raw(small_fmnist_npz))
    procs = [_sweep(str(path), "--storage", db_url, "--cache-dir", str(teacher_cache), "--workers", "2"),
             _sweep(str(path), "--storage", db_url, "--cache-dir", str(teacher_cache))]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err
        assert "locked" not in out + err and "Traceback" not in out + err
    assert "w2:" in outs[0][0]  # both workers of --workers 2 ran trials or waited for them
    _check_planned_set(db_url, study)
    assert "#" not in "".join(load_runs(db_url, "tiny")["visit"])  # no visit was run twice


@pytest.mark.slow
def test_non_finite_loss_is_failed_with_its_step_and_the_sweep_goes_on(
        small_fmnist_npz: Path, db_url: str, teacher_cache: Path) -> None:
    raw = small_study_raw(small_fmnist_npz)
    raw["search"].update(lr=[1.0e-3, 1.0e30], sampler="grid")
    raw["search"]["lr_extend"] = 0  # the subject is a diverging lr; extending below 1e-3 by 1e27 would add runs
    raw["finalists"]["seeds"] = 1
    study = parse_study(raw)
    run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    runs = load_runs(db_url, "tiny")
    failed = runs[runs["state"] == "failed"]
    assert len(failed) == 3 and (failed["lr"] == 1.0e30).all()  # CE and both KD points at lr 1e30
    assert failed["error"].str.contains(r"became (?:nan|-?inf) at step \d+", regex=True).all()
    fin = runs[runs["kind"] == "finalist"]
    assert set(fin["state"]) == {"complete"} and (fin["lr"] == 1.0e-3).all()
    assert study_progress(Store.open(db_url), study).counts == {"complete": 5, "failed": 3}
    bad = [t for t in optuna.load_study(study_name="tiny", storage=db_url).trials if t.state.name == "FAIL"]
    assert len(bad) == 2 and all("at step" in t.user_attrs["fail_reason"] and "fail_step" in t.user_attrs for t in bad)


@pytest.mark.slow
def test_a_crash_inside_a_finalists_final_write_leaves_no_half_run(
        small_fmnist_npz: Path, db_url: str, teacher_cache: Path) -> None:
    study = parse_study(small_study_raw(small_fmnist_npz))
    fired: list[int] = []

    def crash(session: Session, _ctx: object) -> None:
        for obj in session.new:
            if isinstance(obj, EpochRow) and not fired:
                kind, state = session.execute(sa.select(RunRow.kind, RunRow.state)
                                              .where(RunRow.id == obj.run_id)).one()
                if kind == "finalist" and state == "complete":  # the row is written, its epochs not yet
                    fired.append(obj.run_id)
                    raise RuntimeError("injected crash in the final write")

    sa.event.listen(Session, "after_flush", crash)
    try:
        with pytest.raises(RuntimeError, match="injected crash"):
            run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    finally:
        sa.event.remove(Session, "after_flush", crash)
    runs = load_runs(db_url, "tiny").set_index("run_id")
    hit = runs.loc[fired[0]]
    assert hit["state"] == "interrupted" and pd.isna(hit["test_acc"])  # the complete write was rolled back
    with Store.open(db_url).engine.connect() as conn:
        row = conn.execute(sa.select(RunRow.test_predictions).where(RunRow.id == fired[0])).scalar()
    assert row is None
    run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    _check_planned_set(db_url, study)


@pytest.mark.slow
def test_a_late_worker_never_writes_into_its_retired_attempt(
        small_fmnist_npz: Path, tmp_path: Path, db_url: str, teacher_cache: Path) -> None:
    """Worker A is stopped (SIGSTOP) mid-trial past the heartbeat timeout; B takes its visit over and finishes
    the study; A resumes: its writes are refused (the run stays retired, B's stands), it says so and ends
    cleanly, and every visit has exactly one complete run and one COMPLETE Optuna trial."""
    raw = small_study_raw(small_fmnist_npz)
    study = parse_study(raw)
    path = _write(tmp_path, raw)
    a = _sweep(str(path), "--storage", db_url, "--cache-dir", str(teacher_cache))
    held = _stop_mid_trial(a, db_url, "tiny", 0)
    try:
        visit = held[held["state"] == "running"]["visit"].iloc[0]
        run_sweep(study, storage=db_url, cache_dir=teacher_cache, stale_after_s=1.0)  # worker B, in this process
    finally:
        a.send_signal(signal.SIGCONT)
    out, err = a.communicate(timeout=300)
    assert a.returncode == 0, (out, err)
    assert "Traceback" not in err
    assert f"{visit}: retired" in out and "taken over by another worker" in out
    _check_planned_set(db_url, study)
    runs = load_runs(db_url, "tiny").set_index("visit")
    assert runs.loc[f"{visit}#1", "state"] == "failed" and "heartbeat" in runs.loc[f"{visit}#1", "error"]
    for name in ("tiny", "tiny.ce"):  # one COMPLETE Optuna trial per search visit: A's never completed
        trials = optuna.load_study(study_name=name, storage=db_url).trials
        done = [t.user_attrs["visit"] for t in trials if t.state.name == "COMPLETE"]
        assert len(done) == len(set(done))


@pytest.mark.slow
def test_sigterm_ends_the_trial_as_ctrl_c_does(
        small_fmnist_npz: Path, tmp_path: Path, db_url: str, teacher_cache: Path) -> None:
    """A scheduler's SIGTERM mid-trial: exit 143 with the resume line, the run interrupted and its Optuna trial
    FAIL (not left running), and the same command finishes the study."""
    raw = small_study_raw(small_fmnist_npz)
    study = parse_study(raw)
    path = _write(tmp_path, raw)
    proc = _sweep(str(path), "--storage", db_url, "--cache-dir", str(teacher_cache))
    _signal_mid_trial(proc, db_url, "tiny", 1, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out, err)
    assert "terminated (SIGTERM)" in err and "Run the same command again to resume" in err
    assert "Traceback" not in err
    runs = load_runs(db_url, "tiny")
    assert "running" not in set(runs["state"])  # interrupted, or (SIGTERM landed between trials) none
    trials = optuna.load_study(study_name="tiny", storage=db_url).trials
    trials += optuna.load_study(study_name="tiny.ce", storage=db_url).trials
    assert not [t.number for t in trials if t.state.name == "RUNNING"]  # a cut-off trial is FAIL
    run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    _check_planned_set(db_url, study)


@pytest.mark.parametrize("where", ["claim", "attempt"])
def test_a_sigterm_between_a_claim_and_its_trials_start_records_the_run_interrupted(
        small_fmnist_npz: Path, db_url: str, teacher_cache: Path, monkeypatch: pytest.MonkeyPatch,
        where: str) -> None:
    """SIGTERM landing right after a claim commits, or while the claimed visit's attempt is being set up (before
    its trial records itself): the run is interrupted, not left running for a dead worker (which the next claim
    would retire as failed: seen once in CI, a submitit worker stopped right after its claim)."""
    from kdbench import errors
    from kdbench.cli import _on_sigterm
    from kdbench.sweep import attempt

    study = parse_study(small_study_raw(small_fmnist_npz))
    sent: list[bool] = []

    def kill_once() -> None:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    if where == "claim":
        claim = Store.claim

        def claim_then_kill(self: Store, *args: object, **kwargs: object) -> object:
            claimed = claim(self, *args, **kwargs)  # type: ignore[arg-type]
            kill_once()
            return claimed

        monkeypatch.setattr(Store, "claim", claim_then_kill)
    else:
        recipe = attempt.visit_recipe

        def recipe_then_kill(*args: object) -> object:
            kill_once()
            return recipe(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(attempt, "visit_recipe", recipe_then_kill)
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with pytest.raises(errors.Terminated):
            run_sweep(study, storage=db_url, cache_dir=teacher_cache)
    finally:
        signal.signal(signal.SIGTERM, before)
        errors._TERMINATION.clear()
    monkeypatch.undo()
    runs = load_runs(db_url, "tiny")
    assert sent and list(runs["state"]) == ["interrupted"], runs[["visit", "state", "error"]]
    assert runs["error"].iloc[0] == "Terminated: SIGTERM"
    run_sweep(study, storage=db_url, cache_dir=teacher_cache)  # the resume retires it as interrupted, not failed
    runs = load_runs(db_url, "tiny").set_index("visit")
    assert runs.filter(like="#", axis=0)["state"].tolist() == ["interrupted"]
    _check_planned_set(db_url, study)


@pytest.mark.slow
def test_a_deleted_database_stops_the_sweep_at_once(
        small_fmnist_npz: Path, tmp_path: Path, teacher_cache: Path) -> None:
    """The database file is deleted mid-sweep: the worker stops before its next trial with one line and exit 2,
    rather than training every remaining visit into a file nobody can read."""
    folder = tmp_path / "db"
    folder.mkdir()
    url = f"sqlite:///{folder / 'kd.db'}"
    raw = small_study_raw(small_fmnist_npz)
    raw["student"]["epochs"] = 4
    proc = _sweep(str(_write(tmp_path, raw)), "--storage", url, "--cache-dir", str(teacher_cache))
    _wait_mid_trial(proc, url, "tiny", 0)
    for f in folder.iterdir():
        f.unlink()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("kdbench: error: --storage ") and "deleted or replaced" in lines[-1]
    assert "Traceback" not in err
    assert out.count(": complete, val") <= 1  # at most the trial it was in; nothing after
