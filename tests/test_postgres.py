"""PostgreSQL: three `kdbench sweep` workers share one study; a password-protected database keeps its secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import yaml

from kdbench.config import parse_study
from kdbench.store import Store, load_runs
from kdbench.sweep import Visit, plan_search, planned_total

WORKERS = 3


@pytest.mark.slow
def test_three_workers_share_a_study(postgres_url: str, small_study_dict: dict, tmp_path: Path) -> None:
    small_study_dict["search"]["temperature"] = [1, 2, 4]
    study = parse_study(small_study_dict)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))
    cmd = [sys.executable, "-m", "kdbench", "sweep", str(path), "--storage", postgres_url, "--quiet",
           "--threads", "1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(WORKERS)]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"worker failed:\n{out}\n{err}"

    # each worker prints one line per visit it ran: together, every planned visit exactly once
    ran = Counter(line.split("] ", 1)[1].split(":", 1)[0]
                  for out, _ in outs for line in out.splitlines() if line.startswith("["))
    runs = load_runs(postgres_url, study.name)
    assert len(runs) == planned_total(study) == 4 + 2 * 2
    assert runs["visit"].is_unique and set(runs["state"]) == {"complete"} and set(runs["attempt"]) == {1}
    assert sorted(ran) == sorted(runs["visit"]) and set(ran.values()) == {1}

    # Optuna's own API and CLI read the same database: one complete trial per search visit
    kd = optuna.load_study(study_name=study.name, storage=postgres_url)
    assert sorted(t.params["temperature"] for t in kd.trials) == [1.0, 2.0, 4.0]
    assert {t.state.name for t in kd.trials} == {"COMPLETE"}
    assert len(kd.trials) + 1 == len(plan_search(study))
    cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run([str(cli), "trials", "--study-name", f"{study.name}.ce", "--storage", postgres_url,
                          "-f", "json"], capture_output=True, text=True, timeout=300, check=True).stdout
    assert [t["state"] for t in json.loads(out)] == ["COMPLETE"]


def test_workers_opening_an_old_database_together_widen_it_once(postgres_url: str, tiny_study_dict: dict) -> None:
    """Six workers open at once a database from before wide method names and study uids (kdbench_runs.loss
    VARCHAR(8), which PostgreSQL enforces): the one upgrade widens the columns in place, adds the uid and its
    index, keeps the stored run; every worker gets a store, and a 40-character method name is stored."""
    import sqlalchemy as sa
    from test_store import column_lengths, old_style_tables

    old_style_tables(postgres_url)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO kdbench_studies (name, config, config_hash, created, commit) "
                             "VALUES ('old', '{}', 'x', now(), 'c')"))
        conn.execute(sa.text("INSERT INTO kdbench_runs (study_id, visit, kind, loss, seed, state, attempt, "
                             "epochs_done, config_hash) SELECT id, 'kd/r=0', 'kd', 'kd', 0, 'complete', 1, 1, 'x' "
                             "FROM kdbench_studies"))
    with pytest.raises(sa.exc.DataError, match="too long"), engine.begin() as conn:  # what the old width refused
        conn.execute(sa.text(f"UPDATE kdbench_runs SET loss = '{'m' * 40}'"))
    engine.dispose()
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: Store.open(postgres_url), range(6)))
    assert column_lengths(postgres_url) == {"kind": 64, "loss": 64, "uid": True, "uid_unique": True}
    assert list(stores[0].runs("old")[["visit", "loss"]].itertuples(index=False, name=None)) == [("kd/r=0", "kd")]
    study = parse_study(tiny_study_dict)
    sid = stores[1].register_study(study).id
    name = "m" * 40
    assert stores[2].claim(sid, Visit(f"{name}/r=0", name, name, 0), 0, study.hash, 60.0) is not None
    assert list(stores[3].runs("tiny")["loss"]) == [name]


PW_USER = "kdbench_pw_user"  # .ci/postgres.sh makes this one user log in with its password (scram-sha-256)


@pytest.fixture
def password_url(postgres_server: str) -> Iterator[tuple[str, str]]:
    """A fresh database owned by a user that must give its password: (URL with the password, the password)."""
    import sqlalchemy as sa

    admin = sa.engine.make_url(postgres_server)
    secret = f"pw-{uuid.uuid4().hex}"
    name = f"kdbench_test_pw_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :u"), {"u": PW_USER}).scalar()
        conn.execute(sa.text(f"{'ALTER' if exists else 'CREATE'} ROLE {PW_USER} LOGIN PASSWORD '{secret}'"))
        conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER {PW_USER}'))
    url = admin.set(username=PW_USER, password=secret, database=name)
    wrong = sa.create_engine(url.set(password="not-" + secret))
    try:
        with wrong.connect():
            pytest.skip("this PostgreSQL server lets kdbench_pw_user in without its password (see .ci/postgres.sh)")
    except sa.exc.OperationalError:
        pass  # the server checks the password: a masked one could not connect
    finally:
        wrong.dispose()
    yield url.render_as_string(hide_password=False), secret
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.mark.slow
def test_a_password_protected_database(password_url: tuple[str, str], small_study_dict: dict, tmp_path: Path) -> None:
    """A sweep and a report on a database whose user needs a password: the report computes the importances
    (Optuna is opened with the real password), and the password appears in no message, row or report file."""
    import sqlalchemy as sa

    from kdbench.report.frames import study_frames

    url, secret = password_url
    small_study_dict["search"]["temperature"] = [1, 2, 4, 8]  # four complete KD trials: enough for importances
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out_dir = tmp_path / "report"

    def kdbench(*args: str, ok: bool = True) -> str:
        p = subprocess.run([sys.executable, "-m", "kdbench", *args], capture_output=True, text=True, env=env,
                           timeout=900)
        assert (p.returncode == 0) == ok, f"kdbench {args[0]} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        return p.stdout + p.stderr

    said = [
        kdbench("sweep", str(path), "--storage", url, "--quiet", "--threads", "1", "--device", "cpu",
                "--cache-dir", str(tmp_path / "cache")),
        kdbench("report", "tiny", "--storage", url, "--out", str(out_dir)),
        kdbench("show", "tiny", "--storage", url),
        kdbench("ls", "--storage", url),
        kdbench("show", "tiny", "--storage", url.replace(secret, "not-" + secret), ok=False),
    ]
    assert "kdbench_pw_user:***@" in said[2] and "error" in said[4]

    frames = study_frames(url, "tiny", load_images=False, importance_min_trials=4)  # Optuna read through PostgreSQL
    assert frames.importances.n_trials == 4 and not frames.importances.table.empty, frames.importances.note
    assert frames.importances.note == "from n=4 complete KD trials"

    for text in said:
        assert secret not in text
    files = [f for f in out_dir.rglob("*") if f.is_file()]
    assert any(f.name == "index.html" for f in files)
    for f in files:
        assert secret.encode() not in f.read_bytes(), f"the password is in {f}"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            assert "kdbench_runs" in tables and "trials" in tables
            for table in tables:
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    assert secret not in repr(tuple(row)), f"the password is stored in {table}"
    finally:
        engine.dispose()


@pytest.mark.slow
def test_three_times_more_workers_than_connections(postgres_server: str) -> None:
    """12 store-load workers (bench/store_load.py: claims, Optuna ask/tell, run writes; no training) as a role
    allowed 4 connections: kdbench holds a server connection only per transaction and waits while the server is
    full, so every visit ends complete exactly once, with no error. (Connected as before, a pool per engine and
    no waiting, the same load fails with "too many connections for role": `bench/store_load.py --pooled`.)"""
    import sqlalchemy as sa

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import store_load

    name = f"kdbench_limit_{os.getpid()}"
    url = store_load._database(postgres_server, name, role_limit=4)
    try:
        got = store_load.run(url, workers=12, visits=48, pooled=False, admin_url=postgres_server)
        assert got["errors"] == 0, got["first_error"]
        assert got["exactly_once"]
    finally:
        engine = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}_user"'))
        engine.dispose()


@pytest.mark.slow
def test_load_workers_through_pgbouncer_in_transaction_mode(pgbouncer_url: str, postgres_server: str) -> None:
    """4 store-load workers (bench/store_load.py) through PgBouncer in transaction mode, a pool of 5 server
    connections: every visit complete exactly once, no error, no Optuna trial left RUNNING or WAITING (or unlike
    its run), and never more server connections than the pool."""
    from pgbouncer import POOL_SIZE

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import store_load

    got = store_load.run(pgbouncer_url, workers=4, visits=40, pooled=False, admin_url=postgres_server)
    assert got["errors"] == 0, got["first_error"]
    assert got["exactly_once"] and got["inconsistent_trials"] == 0
    assert 0 < got["max_connections"] <= POOL_SIZE
