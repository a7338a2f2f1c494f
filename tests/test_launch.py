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
from conftest import tiny_study_raw

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


def _launch_raw() -> dict:
    """The tiny study with 600 validation images (val_fraction 0.01, not 0.05: every visit evaluates after each
    epoch, and the tiny study's 3,000 made most of a 30-epoch visit's time) and an mlp-800 teacher (half the CPU
    time of cnn-s to train and to cache its logits of ~59,000 training images; the launchers never look inside)."""
    raw = tiny_study_raw()
    raw["data"]["val_fraction"] = 0.01
    raw["teacher"]["model"] = "mlp-800"
    return raw


@pytest.fixture
def launch_raw() -> dict:
    """A fresh copy of :func:`_launch_raw` for each test."""
    return _launch_raw()


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The launch tests' teacher, trained once for every test here (the cache is keyed by content)."""
    from kdbench.teacher import prepare_teacher

    cache = tmp_path_factory.mktemp("cache")
    prepare_teacher(parse_study(_launch_raw()), cache_dir=cache)
    return cache


def _study_file(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**raw, "launcher": {"logs": str(tmp_path / "jobs")}}))  # submitit's files
    return path


def _sweep(path: Path, db_url: str, cache: Path, *args: str, interactive: bool = False) -> subprocess.Popen[str]:
    """``kdbench sweep`` of ``path``; ``interactive``: SIGINT acts as at a terminal, even when the test run was
    started in the background (a script's `cmd &` starts with SIGINT ignored, and children inherit that)."""
    cmd = [sys.executable, "-m", "kdbench", "sweep", str(path), "--storage", db_url, "--quiet", "--device", "cpu",
           "--cache-dir", str(cache), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if interactive else None)


def _exactly_once(db_url: str, raw: dict) -> None:
    """Every planned visit complete once (retired attempts aside), and no Optuna trial left RUNNING."""
    study = parse_study(raw)
    runs = Store.open(db_url).runs(study.name)
    final = runs[~runs["visit"].str.contains("#")]
    assert len(final) == planned_total(study) and set(final["state"]) == {"complete"}, runs[["visit", "state"]]
    for name in optuna.get_all_study_names(db_url):  # an interrupted visit's trial is closed as FAIL
        states = [t.state.name for t in optuna.load_study(study_name=name, storage=db_url).trials]
        assert not {"RUNNING", "WAITING"} & set(states), (name, states)
        assert states.count("COMPLETE") + states.count("PRUNED") == (final["optuna_study"] == name).sum(), states


@pytest.mark.slow
def test_submitit_runs_a_study_on_three_workers(needs_fmnist: None, launch_raw: dict, db_url: str,
                                                tmp_path: Path, teacher_cache: Path) -> None:
    """--launcher slurm where there is no sbatch: submitit's own local executor, one array task per worker."""
    proc = _sweep(_study_file(tmp_path, launch_raw), db_url, teacher_cache, "--launcher", "slurm",
                  "--workers", "3")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "3 submitit local tasks" in out
    _exactly_once(db_url, launch_raw)
    assert len(list((tmp_path / "jobs").glob("*_result.pkl"))) == 3  # submitit ran them


def _running_workers(db_url: str, name: str, n: int, deadline_s: float) -> list[int]:
    """The pids of ``n`` workers training a visit at once (from their claims' owners, ``host:pid:...``)."""
    import sqlalchemy as sa

    from kdbench.store.schema import RunRow

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        store = Store.open(db_url)  # anew: the parent creates the tables once the study is checked
        if store.ready and store.study(name) is not None:
            with store.connect() as conn:
                owners = conn.execute(sa.select(RunRow.owner).where(RunRow.state == "running")).scalars().all()
            pids = sorted({int(o.split(":")[1]) for o in owners if Path(f"/proc/{o.split(':')[1]}").exists()})
            if len(pids) >= n:
                return pids[:n]
        time.sleep(0.5)
    raise AssertionError(f"{n} workers were not training at once in time")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_sigterm_and_preemption_of_submitit_workers_leave_interrupted_visits_others_complete(
        needs_fmnist: None, launch_raw: dict, db_url: str, tmp_path: Path,
        teacher_cache: Path) -> None:
    """SLURM's scancel and preemption send SIGTERM to a task's processes: worker A records its visit as interrupted
    and exits. Before a time limit (or on preemption with --signal) submitit's task gets USR2: worker B is
    stopped the same way and its task requeued, and its new worker goes on. The study ends complete, each visit
    once, no Optuna trial left RUNNING."""
    launch_raw["student"]["epochs"] = 30  # long enough to be caught training, two at once
    launch_raw["finalists"]["seeds"] = 1  # 2 finalists, not 4: after the stops one worker trains all that is left
    proc = _sweep(_study_file(tmp_path, launch_raw), db_url, teacher_cache, "--launcher", "slurm",
                  "--workers", "2")
    a, b = _running_workers(db_url, "tiny", 2, 900)
    os.kill(a, signal.SIGTERM)  # what SLURM sends every process of a cancelled or preempted task
    os.kill(_parent(b), signal.SIGUSR2)  # its task: what submitit's controller sends near the time limit, and SLURM
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "was stopped (status 143)" in out  # A's task ended after its worker's SIGTERM; B's was requeued
    runs = Store.open(db_url).runs("tiny")
    assert (runs["state"] == "interrupted").sum() == 2, runs[["visit", "state", "attempt"]]
    logs = "".join(p.read_text() for p in (tmp_path / "jobs").glob("*_log.*"))
    assert "Requeued job" in logs
    _exactly_once(db_url, launch_raw)


@pytest.mark.slow
def test_ray_runs_a_study_on_two_workers(needs_fmnist: None, launch_raw: dict, db_url: str,
                                         tmp_path: Path, teacher_cache: Path) -> None:
    """--launcher ray without an address: a Ray cluster started on this machine for the sweep, one task per worker."""
    pytest.importorskip("ray")
    proc = _sweep(_study_file(tmp_path, launch_raw), db_url, teacher_cache, "--launcher", "ray", "--workers", "2")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "2 Ray tasks on" in out
    _exactly_once(db_url, launch_raw)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "slurm", "ray"])
def test_ctrl_c_to_the_parent_while_two_workers_train_leaves_interrupted_visits_the_next_run_completes(
        needs_fmnist: None, launch_raw: dict, db_url: str, tmp_path: Path, teacher_cache: Path,
        launcher: str) -> None:
    """Ctrl-C to `kdbench sweep --workers 2` (each launcher) while both workers train: it exits 130, both visits
    are recorded as interrupted (none left running, none failed), and the same command then completes the study,
    each visit once."""
    if launcher == "ray":
        pytest.importorskip("ray")
    launch_raw["student"]["epochs"] = 30  # long enough to be caught training, two at once
    launch_raw["finalists"]["seeds"] = 1
    path = _study_file(tmp_path, launch_raw)
    args = ("--launcher", launcher, "--workers", "2")
    proc = _sweep(path, db_url, teacher_cache, *args, interactive=True)
    workers = _running_workers(db_url, "tiny", 2, 900)
    proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C, sent to the parent alone
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Run the same command again to resume" in out
    end = time.monotonic() + 120  # the workers record their visits as they stop (a launcher's may outlive it)
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < end:
        time.sleep(0.2)
    runs = Store.open(db_url).runs("tiny")
    assert sorted(runs["state"]) == ["interrupted", "interrupted"], runs[["visit", "state", "error"]]
    proc = _sweep(path, db_url, teacher_cache, *args)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    runs = Store.open(db_url).runs("tiny")
    assert sorted(runs.loc[runs["visit"].str.contains("#"), "state"]) == ["interrupted", "interrupted"]
    _exactly_once(db_url, launch_raw)


@pytest.mark.slow
def test_ray_workers_on_a_cluster_started_before_the_sweep_go_through_the_optuna_proxy_and_others_start_their_own(
        needs_fmnist: None, launch_raw: dict, db_url: str, tmp_path: Path, teacher_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray cluster started before the sweep (`ray start --head`, as a real one is) gives its workers its own
    environment, not the parent's: `--optuna-proxy` must travel inside each worker's command. The proxy here serves
    a database of its own, so a worker whose Optuna calls went to --storage would find no Optuna study there. A sweep
    without --ray-address meanwhile starts a cluster of its own rather than joining the one running here."""
    pytest.importorskip("ray")
    from test_store_proxy import _free_port, _start_proxy

    # Ray 2.60 turns token authentication on for `ray start`, and then refused ray.init(address=HOST:PORT) here
    # ("Authentication token is missing"; address="auto" connected): off for this cluster and the sweep
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
                   check=True, env=env, capture_output=True, timeout=300)
    optuna_db = f"sqlite:///{tmp_path / 'optuna.db'}"
    proxy, address = _start_proxy(optuna_db)
    try:
        proc = _sweep(_study_file(tmp_path, launch_raw), db_url, teacher_cache, "--launcher", "ray",
                      "--ray-address", f"127.0.0.1:{port}", "--workers", "2", "--optuna-proxy", address)
        out, _ = proc.communicate(timeout=900)
        # without --ray-address: a cluster of its own, never the one already running here (ray.init's default
        # joins that one, where its num_cpus was refused)
        own = _sweep(_study_file(tmp_path, launch_raw), f"sqlite:///{tmp_path / 'own.db'}", teacher_cache,
                     "--launcher", "ray", "--workers", "2")
        own_out, _ = own.communicate(timeout=900)
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.communicate(timeout=30)
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, out
    assert f":{port}" in out and "2 Ray tasks on" in out
    assert own.returncode == 0 and "2 Ray tasks on" in own_out and f":{port}" not in own_out, own_out
    runs = Store.open(db_url).runs("tiny")
    assert len(runs) == planned_total(parse_study(launch_raw)) and set(runs["state"]) == {"complete"}
    assert not optuna.get_all_study_names(db_url)  # every Optuna call went through the proxy, to its database
    states = [t.state.name for name in optuna.get_all_study_names(optuna_db)
              for t in optuna.load_study(study_name=name, storage=optuna_db).trials]
    assert states and set(states) == {"COMPLETE"} and len(states) == runs["trial_number"].notna().sum()


def test_a_launcher_whose_package_is_missing_is_one_line(launch_raw: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--launcher slurm` without submitit installed (an import of it blocked as Python documents: a None entry in
    sys.modules): one line naming the extra to install, exit 2, before any teacher is trained."""
    from click.testing import CliRunner

    from kdbench import cli

    monkeypatch.setitem(sys.modules, "submitit", None)
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    res = CliRunner().invoke(cli.main, ["sweep", str(_study_file(tmp_path, launch_raw)), "--storage", url,
                                        "--launcher", "slurm", "--workers", "2", "--cache-dir", str(tmp_path / "c"),
                                        "--quiet"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0] == ("kdbench: error: launcher: slurm needs submitit, which is not installed; "
                        "pip install 'kdbench[cluster]'")
    assert not (tmp_path / "c" / "teachers").exists()


@pytest.mark.parametrize(("section", "says"), [
    ({"name": "slurm", "gpus_per_worker": -1}, "launcher.gpus_per_worker"),
    ({"name": "slurm", "time_min": 0}, "launcher.time_min"),
    ({"name": "kubernetes"}, "launcher.name"),
])
def test_launcher_options_that_are_not_valid_are_one_line(launch_raw: dict, tmp_path: Path, section: dict,
                                                          says: str) -> None:
    """A study file's launcher section that is not valid: one line naming the key, exit 2."""
    from click.testing import CliRunner

    from kdbench import cli

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**launch_raw, "launcher": section}))
    res = CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", f"sqlite:///{tmp_path / 'kd.db'}",
                                        "--workers", "2", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and says in lines[0], res.output
    assert not (tmp_path / "kd.db").exists()  # refused before anything was stored


def test_a_ray_address_where_nothing_answers_is_one_line_before_the_teacher_trains(
        launch_raw: dict, tmp_path: Path) -> None:
    """`--ray-address` where nothing listens: one line and exit 2 within seconds (ray.init retries such an address for
    many minutes), before a teacher is trained or a study stored."""
    pytest.importorskip("ray")
    from test_store_proxy import _free_port

    address = f"127.0.0.1:{_free_port()}"  # a port just found free: nothing listens there
    start = time.monotonic()
    proc = _sweep(_study_file(tmp_path, launch_raw), f"sqlite:///{tmp_path / 'kd.db'}", tmp_path / "c",
                  "--launcher", "ray", "--ray-address", address, "--workers", "2")
    out, _ = proc.communicate(timeout=120)
    lines = out.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith(
        f"kdbench: error: launcher.ray_address: nothing answers at '{address}' ("), out
    assert time.monotonic() - start < 60 and not (tmp_path / "c" / "teachers").exists()
