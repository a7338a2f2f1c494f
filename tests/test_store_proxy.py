"""Optuna's gRPC storage proxy: `kdbench storage-proxy` and workers given `--optuna-proxy`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from kdbench.config import optuna_study_names, parse_study
from kdbench.errors import StoreError
from kdbench.store import Store, load_runs
from kdbench.store.proxy import connect, parse_address
from kdbench.sweep import planned_total

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_proxy(storage: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "storage-proxy", "--storage", storage, "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    return proc, f"127.0.0.1:{port}"


@pytest.mark.parametrize("bad", ["node1", "node1:", ":13000", "node1:port", "node1:70000"])
def test_a_bad_proxy_address_is_one_line(bad: str) -> None:
    with pytest.raises(StoreError, match=r"--optuna-proxy .*not host:port; give where `kdbench storage-proxy`"):
        parse_address(bad)


def test_parse_address() -> None:
    assert parse_address("node1:13000") == ("node1", 13000)
    assert parse_address("[::1]:13000") == ("::1", 13000)


def test_a_proxy_that_does_not_answer_is_one_line() -> None:
    with pytest.raises(StoreError, match=r"no Optuna storage proxy answers there within 0.5 s; start it"):
        connect(f"127.0.0.1:{_free_port()}", timeout_s=0.5)


@pytest.mark.slow  # a kdbench process starts (seconds)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_proxy_serves_optuna_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    """A worker's store with --optuna-proxy writes Optuna's trials through the proxy into the database; Ctrl-C or
    SIGTERM stops the proxy with status 0."""
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    Store.open(url).ensure_tables()
    proc, address = _start_proxy(url)
    try:
        store = Store.open(url, optuna_proxy=address)
        storage = store.optuna_storage()
        assert type(storage).__name__ == "GrpcStorageProxy"
        study = optuna.create_study(study_name="via-proxy", storage=storage)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        direct = optuna.load_study(study_name="via-proxy", storage=url)
        assert [t.state.name for t in direct.trials] == ["COMPLETE"] * 3
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"Optuna storage proxy for {url} on {address}", "Optuna storage proxy stopped"]


@pytest.mark.slow
def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "kdbench", "storage-proxy", "--storage",
                              f"sqlite:///{tmp_path / 'kd.db'}", "--host", "127.0.0.1", "--port", str(port)],
                             capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"kdbench: error: --host 127.0.0.1 --port {port}: the proxy cannot listen")


@pytest.mark.slow
def test_workers_through_the_proxy_share_a_study(postgres_server: str, postgres_url: str, small_study_dict: dict,
                                                 tmp_path: Path) -> None:
    """Three workers (`--workers 3`) whose Optuna calls go through the proxy and whose kdbench tables go to
    PostgreSQL: every visit runs exactly once, every trial is closed, and the proxy stops cleanly."""
    study = parse_study(small_study_dict)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))
    Store.open(postgres_url).ensure_tables()
    proxy, address = _start_proxy(postgres_url)
    try:
        out = subprocess.run([sys.executable, "-m", "kdbench", "sweep", str(path), "--storage", postgres_url,
                              "--optuna-proxy", address, "--workers", "3", "--threads", "1", "--device", "cpu",
                              "--cache-dir", str(tmp_path / "cache"), "--quiet"],
                             capture_output=True, text=True, env=ENV, timeout=1200)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.communicate(timeout=30)
    assert proxy.returncode == 0

    runs = load_runs(postgres_url, study.name)
    assert len(runs) == planned_total(study) and runs["visit"].is_unique
    assert set(runs["state"]) == {"complete"} and set(runs["attempt"]) == {1}
    stored = {s.study_name for s in optuna.get_all_study_summaries(postgres_url)}
    states = [t.state.name for name in optuna_study_names(study.name) if name in stored
              for t in optuna.load_study(study_name=name, storage=postgres_url).trials]
    assert states and set(states) == {"COMPLETE"}  # none RUNNING or WAITING
    assert runs["trial_number"].notna().sum() == len(states)  # each trial is a run's
