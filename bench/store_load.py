"""Store load: what one results database serves to N workers that only claim, ask, beat, finish and tell.

N processes (no torch: the store, Optuna and pandas only) share one study of V visits and run, for each
visit they win, kdbench's claim, Optuna's ask, the run's link and a heartbeat write, the run's final write
and Optuna's tell, as a sweep worker does around its training. Printed per setting: visits per second
(over the span from the first worker's first claim to the last one's end: start-up left out),
p50 / p99 latency of a claim attempt, the errors, the most server connections seen at once (PostgreSQL:
sampled from pg_stat_activity, per worker), whether every visit ended complete exactly once, the inconsistent
trials (an Optuna trial whose state is not its run's, or left RUNNING / WAITING) and the most memory one load
worker held (peak RSS). A load worker imports no torch (tests/test_store.py checks it in a fresh interpreter):
one held 88 MiB (its own peak RSS over 200 visits on SQLite; `/usr/bin/time -v` 88 MiB), against 562 MiB (687)
while `import kdbench.store` loaded torch through the study schema (commit f959e31, the same command).

    python bench/store_load.py                                   # SQLite, 1 4 16 workers
    .ci/postgres.sh python bench/store_load.py --postgres        # and the throwaway PostgreSQL server
    python bench/store_load.py --url postgresql+psycopg://u@h/db --workers 64 --visits 2000
    .ci/postgres.sh python bench/store_load.py --postgres --proxy --workers 1 32 128
    .ci/postgres.sh python bench/store_load.py --postgres --pgbouncer --proxy --only pgbouncer+proxy --workers 128

`--proxy` repeats each PostgreSQL setting with Optuna's calls through `kdbench storage-proxy`, and `--pgbouncer`
through Debian's PgBouncer in transaction mode (a pool of `--pool-size` server connections, started on loopback
by tests/pgbouncer.py); both together add the two at once: kdbench's tables through the pooler, Optuna's calls
through the proxy, whose own storage goes through the pooler too.

With --postgres, `--role-limit L` also runs the largest N as a role whose CONNECTION LIMIT is L (e.g. 3x
more workers than connections), and `--pooled` repeats each setting as kdbench connected before: SQLAlchemy's
default pool (5 connections per engine, kept open) and no waiting for a free slot, for comparison.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STUDY = "store-load"
SETTINGS = ("sqlite", "given", "postgresql", "proxy", "pgbouncer", "pgbouncer+proxy")  # what --only may name


def worker(url: str, n_visits: int, index: int, pooled: bool, proxy: str) -> None:
    """One load worker (run as its own process): prints one JSON line with what it measured."""
    import optuna

    import kdbench.store.db as db
    from kdbench.store import Store, now

    if pooled:  # kdbench before issue #15: SQLAlchemy's default pool per engine, no waiting for a free slot
        db.server_engine_kwargs = lambda url: {}  # type: ignore[assignment]
        db.patient = lambda engine: engine  # type: ignore[assignment]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store.open(url, optuna_proxy=proxy or None)
    row = store.study(STUDY)
    assert row is not None
    ostudy = optuna.load_study(study_name=STUDY, storage=store.optuna_storage())
    rng = random.Random(index)
    claim_ms: list[float] = []
    won = errors = 0
    first_error = ""
    started = time.time()
    for i in range(n_visits):
        visit = _Visit(f"kd/v={i}", i)
        try:
            t0 = time.perf_counter()
            claim = store.claim(row.id, visit, i, row.config_hash, stale_after_s=3600)
            claim_ms.append(1000 * (time.perf_counter() - t0))
            if claim is None:
                continue
            won += 1
            trial = ostudy.ask()
            trial.suggest_float("lr", 1e-4, 1e-2, log=True)
            store.update_run(claim.run_id, optuna_study=STUDY, trial_number=trial.number, trial_id=trial._trial_id)
            store.update_run(claim.run_id, heartbeat=now(), epochs_done=1)
            value = rng.random()
            store.finish_run(claim.run_id, [], state="complete", val_acc=value, finished=now())  # closes the trial
        except Exception as exc:  # counted and shown: a load test goes on
            errors += 1
            cause = exc.__cause__ or exc.__context__
            why = f" (from {type(cause).__name__}: {str(cause).splitlines()[0][:200]})" if cause else ""
            first_error = first_error or f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}{why}"
    rss_mb = _peak_rss_mb()
    print(json.dumps({"won": won, "errors": errors, "first_error": first_error, "claim_ms": claim_ms,
                      "started": started, "ended": time.time(), "rss_mb": rss_mb, "torch": "torch" in sys.modules}))


def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB: Linux's VmHWM, its own address space's; ru_maxrss where there is none (on
    Linux it keeps the high-water mark of the process before exec: the forked parent's, torch included)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; macOS: bytes


class _Visit:
    """The claim's view of a planned visit (kdbench.store.VisitLike), without importing the sweep (torch)."""

    def __init__(self, key: str, seed: int) -> None:
        self.key, self.stage, self.loss, self.seed = key, "kd", "kd", seed
        self.temperature, self.alpha, self.lr, self.rank = 4.0, 0.5, 1e-3, None
        self.params: tuple[tuple[str, float], ...] = ()  # Hinton's KD: no other hyperparameters
        self.budget_label: str | None = None  # the study's own budget


def _connections(admin_url: str, database: str, stop: threading.Event, seen: list[int]) -> None:
    """The most client connections to ``database`` seen at once (PostgreSQL's pg_stat_activity, every 20 ms):
    client backends only, not the autovacuum workers the load's writes start on the same database."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            while not stop.wait(0.02):
                n = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                                         "AND backend_type = 'client backend'"),
                                 {"d": database}).scalar_one()
                seen.append(int(n))
    except Exception as exc:  # the figure is then missing, said once
        print(f"# connection count not sampled: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        engine.dispose()


def _inconsistent(url: str, runs: Any) -> int:
    """Optuna trials whose state is not their run's (kdbench.store.trials.OPTUNA_STATES), or that no run points
    to, or left RUNNING / WAITING: read straight from the database, not through a proxy."""
    import optuna

    from kdbench.store.trials import OPTUNA_STATES

    trials = {t.number: t.state.name for t in optuna.load_study(study_name=STUDY, storage=url).trials}
    linked = runs.dropna(subset=["trial_number"])
    wrong = sum(trials.get(int(n)) != OPTUNA_STATES.get(st, "RUNNING")
                for n, st in zip(linked["trial_number"], linked["state"], strict=True))
    unlinked = set(trials) - {int(n) for n in linked["trial_number"]}  # asked, then the run's link failed
    return wrong + sum(trials[n] in ("RUNNING", "WAITING") for n in unlinked)


@contextmanager
def _proxy(url: str) -> Iterator[str]:
    """`kdbench storage-proxy` on ``url`` (a free loopback port): its address once it answers; stopped after."""
    from kdbench.store.proxy import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "storage-proxy", "--storage", url, "--host", "127.0.0.1",
                             "--port", str(port)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        connect(f"127.0.0.1:{port}", timeout_s=120).close()
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def fresh_study(url: str) -> None:
    """The load's study, new (any earlier one dropped): kdbench's row and the Optuna study the workers ask."""
    import optuna

    from kdbench.config import parse_study
    from kdbench.store import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store.open(url)
    store.drop_study(STUDY)
    store.register_study(parse_study({"name": STUDY}))
    optuna.create_study(study_name=STUDY, storage=store.optuna_storage(), direction="maximize")
    store.engine.dispose()


def run(url: str, workers: int, visits: int, pooled: bool, admin_url: str | None,
        proxy: str = "") -> dict[str, Any]:
    """One setting: a fresh study of ``visits`` visits, ``workers`` processes; returns the figures."""
    import sqlalchemy as sa

    from kdbench.store import Store

    fresh_study(url)
    stop, seen = threading.Event(), [0]
    watcher = None
    if admin_url is not None:
        database = sa.engine.make_url(url).database or ""
        watcher = threading.Thread(target=_connections, args=(admin_url, database, stop, seen), daemon=True)
        watcher.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--worker", url, str(visits)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cmd, str(i), "1" if pooled else "0", proxy], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(workers)]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    stop.set()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        line = out.strip().splitlines()[-1] if out.strip() else ""
        results.append(json.loads(line) if p.returncode == 0 and line.startswith("{") else
                       {"won": 0, "errors": 1, "claim_ms": [], "first_error": (err.strip().splitlines() or ["?"])[-1]})
    runs = Store.open(url, create=False).runs(STUDY)
    ran = [r for r in results if "started" in r]  # the work's span: process start-up (imports) left out
    span = max(r["ended"] for r in ran) - min(r["started"] for r in ran) if ran else wall
    complete = runs[runs["state"] == "complete"]
    ms = sorted(x for r in results for x in r["claim_ms"])
    quantile = (lambda q: ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan"))  # noqa: E731
    errors = sum(r["errors"] for r in results)
    return {"workers": workers, "visits": visits, "pooled": pooled, "proxy": bool(proxy), "wall_s": round(wall, 2),
            "visits_per_s": round(len(complete) / span, 1), "claim_p50_ms": round(quantile(0.5), 2),
            "claim_p99_ms": round(quantile(0.99), 2), "errors": errors,
            "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
            "exactly_once": len(complete) == visits and complete["visit"].is_unique and len(runs) == visits,
            "max_connections": max(seen), "connections_per_worker": round(max(seen) / workers, 2),
            "inconsistent_trials": _inconsistent(url, runs),
            "worker_rss_mb": round(max((r.get("rss_mb", 0) for r in results), default=0), 1)}


def _database(admin_url: str, name: str, role_limit: int | None = None) -> str:
    """A fresh database (and, with ``role_limit``, a role allowed that many connections) on the server."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    user = None
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if role_limit is not None:
            user = f"{name}_user"
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{user}"'))
            conn.execute(sa.text(f'CREATE ROLE "{user}" LOGIN CONNECTION LIMIT {int(role_limit)}'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' OWNER "{user}"' if user else "")))
    engine.dispose()
    url = sa.engine.make_url(admin_url).set(database=name)
    if user is not None:
        url = url.set(username=user, password=None)
    return url.render_as_string(hide_password=False)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":  # a load process: no _common, hence no torch
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", sys.argv[6])
        return
    import _common as c

    p = c.parser(__doc__)
    p.add_argument("--workers", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--visits", type=int, default=400, help="visits in the study (default 400)")
    p.add_argument("--url", default=None, help="a database to load (default: SQLite in a temporary folder)")
    p.add_argument("--postgres", action="store_true", help="also the server in $KDBENCH_TEST_POSTGRES")
    p.add_argument("--role-limit", type=int, default=None, help="PostgreSQL: connection limit of a role for one "
                   "more run of the largest N (e.g. N / 3)")
    p.add_argument("--pooled", action="store_true", help="also each setting with SQLAlchemy's default pool")
    p.add_argument("--pgbouncer", action="store_true", help="--postgres: also through PgBouncer (transaction mode)")
    p.add_argument("--pool-size", type=int, default=20, help="PgBouncer's server connections (default 20)")
    p.add_argument("--proxy", action="store_true", help="--postgres: also Optuna through `kdbench storage-proxy`")
    p.add_argument("--only", nargs="+", choices=SETTINGS, default=SETTINGS, help="of the settings the flags above "
                   "ask for, run only these (given: --url; default: all)")
    args = p.parse_args()
    c.setup(args, "store load: claims, Optuna ask/tell and run writes from N processes, no training")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        targets: list[tuple[str, str, str | None]] = [(args.url, "given", None)] if args.url else \
            [(f"sqlite:///{tmp}/load.db", "sqlite", None)]
        admin = os.environ.get("KDBENCH_TEST_POSTGRES")
        if args.postgres:
            if not admin:
                sys.exit("--postgres needs $KDBENCH_TEST_POSTGRES (run under .ci/postgres.sh)")
            targets.append((_database(admin, "kdbench_load"), "postgresql", admin))
        for url, name, admin_url in targets:
            if name not in args.only:
                continue
            for pooled in ([False, True] if args.pooled and name != "sqlite" else [False]):
                for n in args.workers:
                    rows.append({"store": name, **run(url, n, args.visits, pooled, admin_url)})
                    _show(rows[-1])
        if args.postgres and args.proxy and admin and "proxy" in args.only:
            with _proxy(targets[-1][0]) as address:
                for n in args.workers:
                    rows.append({"store": "postgresql + proxy", **run(targets[-1][0], n, args.visits, False, admin,
                                                                      address)})
                    _show(rows[-1])
        if args.postgres and args.pgbouncer and admin and {"pgbouncer", "pgbouncer+proxy"} & set(args.only):
            sys.path.insert(0, str(ROOT / "tests"))
            from pgbouncer import pgbouncer

            with pgbouncer(targets[-1][0], pool_size=args.pool_size) as pooled_url:
                for n in args.workers if "pgbouncer" in args.only else []:
                    rows.append({"store": f"postgresql, pgbouncer {args.pool_size}",
                                 **run(pooled_url, n, args.visits, False, admin)})
                    _show(rows[-1])
                # kdbench's tables through the pooler, Optuna's through the proxy (itself pooled)
                if args.proxy and "pgbouncer+proxy" in args.only:
                    with _proxy(pooled_url) as address:
                        for n in args.workers:
                            rows.append({"store": f"postgresql, pgbouncer {args.pool_size} + proxy",
                                         **run(pooled_url, n, args.visits, False, admin, address)})
                            _show(rows[-1])
        if args.postgres and args.role_limit and admin:
            n = max(args.workers)
            url = _database(admin, "kdbench_load_limited", args.role_limit)
            rows.append({"store": f"postgresql, role limit {args.role_limit}", **run(url, n, args.visits, False,
                                                                                   admin)})
            _show(rows[-1])
    c.footer({"bench": "store_load", "rows": rows})


def _show(r: dict[str, Any]) -> None:
    pool = "pool of 5" if r["pooled"] else "no pool"
    conns = f", at most {r['max_connections']} connections ({r['connections_per_worker']}/worker)" \
        if r["max_connections"] else ""
    print(f"{r['store']:<32} {r['workers']:3d} workers ({pool}): {r['visits_per_s']:7.1f} visits/s, claim p50 "
          f"{r['claim_p50_ms']:.1f} ms p99 {r['claim_p99_ms']:.1f} ms, {r['errors']} errors{conns}, exactly once: "
          f"{r['exactly_once']}, {r['inconsistent_trials']} inconsistent trials, {r['worker_rss_mb']} MB/worker"
          + (f"  first error: {r['first_error']}" if r["first_error"] else ""), flush=True)


if __name__ == "__main__":
    main()
