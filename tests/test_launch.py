"""Launchers: the study's workers started by submitit (its real local executor where there is no SLURM) and by a
local Ray cluster, every visit complete exactly once; a worker SIGTERMed as SLURM does leaves an interrupted visit
that another worker completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from kdbench.config import parse_study
from kdbench.errors import ConfigError
from kdbench.launch import with_launcher
from kdbench.store import Store
from kdbench.sweep import planned_total


def test_the_launcher_section_is_neither_hashed_nor_stored_and_flags_win(tiny_study_dict: dict) -> None:
    plain = parse_study(tiny_study_dict)
    tiny_study_dict["launcher"] = {"name": "slurm", "partition": "gpu", "sbatch": {"account": "lab"}}
    study = parse_study(tiny_study_dict)
    assert study.hash == plain.hash and "launcher" not in study.resolved()
    flagged = with_launcher(study, name=None, partition="a100", time_min=30, sbatch=("qos=high",))
    assert (flagged.launcher.name, flagged.launcher.partition, flagged.launcher.time_min) == ("slurm", "a100", 30)
    assert flagged.launcher.sbatch == {"account": "lab", "qos": "high"} and flagged.hash == plain.hash
    with pytest.raises(ConfigError, match=r"--sbatch qos: give an sbatch option as KEY=VALUE"):
        with_launcher(study, sbatch=("qos",))


def _study_file(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(path: Path, db_url: str, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "kdbench", "sweep", str(path), "--storage", db_url, "--quiet", "--device", "cpu",
           "--cache-dir", str(tmp_path / "cache"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _exactly_once(db_url: str, raw: dict) -> None:
    """Every planned visit complete once (retired attempts aside), and no Optuna trial left RUNNING."""
    study = parse_study(raw)
    runs = Store.open(db_url).runs(study.name)
    final = runs[~runs["visit"].str.contains("#")]
    assert len(final) == planned_total(study) and set(final["state"]) == {"complete"}, runs[["visit", "state"]]
    for name in optuna.get_all_study_names(db_url):
        states = {t.state.name for t in optuna.load_study(study_name=name, storage=db_url).trials}
        assert states <= {"COMPLETE", "PRUNED"}, (name, states)


@pytest.mark.slow
def test_submitit_runs_a_study_on_three_workers(needs_fmnist: None, tiny_study_dict: dict, db_url: str,
                                                tmp_path: Path) -> None:
    """--launcher slurm where there is no sbatch: submitit's own local executor, one array task per worker."""
    proc = _sweep(_study_file(tmp_path, tiny_study_dict), db_url, tmp_path, "--launcher", "slurm", "--workers", "3")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "3 submitit local tasks" in out
    _exactly_once(db_url, tiny_study_dict)
    assert len(list((tmp_path / "cache" / "submitit" / "tiny").glob("*_result.pkl"))) == 3  # submitit ran them


def _running_worker(db_url: str, name: str, deadline_s: float) -> int:
    """The pid of a worker training a visit now (from its claim's owner, ``host:pid:...``)."""
    import sqlalchemy as sa

    from kdbench.store.schema import RunRow

    store = Store.open(db_url)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if store.ready and store.study(name) is not None:
            with store.connect() as conn:
                owners = conn.execute(sa.select(RunRow.owner).where(RunRow.state == "running")).scalars().all()
            for owner in owners:
                pid = int(owner.split(":")[1])
                if Path(f"/proc/{pid}").exists():
                    return pid
        time.sleep(0.5)
    raise AssertionError("no worker started training in time")


@pytest.mark.slow
def test_sigterm_to_one_submitit_worker_leaves_an_interrupted_visit_another_completes(
        needs_fmnist: None, tiny_study_dict: dict, db_url: str, tmp_path: Path) -> None:
    """SLURM's scancel and preemption send SIGTERM to the task's processes: the worker records its visit as
    interrupted and exits; the other worker takes the visit over; the study ends complete, each visit once."""
    tiny_study_dict["student"]["epochs"] = 6  # long enough to be caught training
    proc = _sweep(_study_file(tmp_path, tiny_study_dict), db_url, tmp_path, "--launcher", "slurm", "--workers", "2")
    os.kill(_running_worker(db_url, "tiny", 600), signal.SIGTERM)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "was stopped (status 143)" in out
    runs = Store.open(db_url).runs("tiny")
    assert (runs["state"] == "interrupted").sum() == 1, runs[["visit", "state", "attempt"]]
    _exactly_once(db_url, tiny_study_dict)


@pytest.mark.slow
def test_ray_runs_a_study_on_two_workers(needs_fmnist: None, tiny_study_dict: dict, db_url: str,
                                         tmp_path: Path) -> None:
    """--launcher ray without an address: a Ray cluster started on this machine for the sweep, one task per worker."""
    pytest.importorskip("ray")
    proc = _sweep(_study_file(tmp_path, tiny_study_dict), db_url, tmp_path, "--launcher", "ray", "--workers", "2")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "2 Ray tasks on" in out
    _exactly_once(db_url, tiny_study_dict)
