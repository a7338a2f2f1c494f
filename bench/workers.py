"""Workers on one machine: trials per hour with 1 and with 2 `kdbench sweep` processes on one store.

Each worker is a separate `kdbench sweep` process on the same SQLite store, with the torch thread count
kdbench's rule gives N workers on this machine: max(1, cores // N) (what `kdbench sweep --workers N`
does). The teacher is trained once beforehand; trials per hour are counted from the store's start and
finish times of the runs (process start-up and data loading excluded), on a fresh study per setting.

    python bench/workers.py                  # 8 KD trials of 30000 rows (one epoch) per setting
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c
import yaml

from kdbench.store import load_runs

ROOT = Path(__file__).resolve().parent.parent


def study(name: str, trials: int, subset: int) -> dict:  # type: ignore[type-arg]
    return {
        "name": name, "seed": 0,
        "data": {"dataset": "fashion-mnist", "val_fraction": 0.05, "subset": subset},
        "teacher": {"model": "cnn-s", "steps": 60, "lr": 3e-3, "min_accuracy": 0.3},
        "student": {"model": "mlp-800", "epochs": 1, "batch_size": 128},
        "search": {"temperature": [2, 4], "alpha": [0.5], "replicates": trials // 2, "lr": [1e-3]},
        "baseline": {"ce": False}, "finalists": {"top_k": 0, "seeds": 1},
    }


def sweep(path: Path, url: str, cache: Path, threads: int) -> subprocess.Popen:  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "kdbench", "sweep", str(path), "--storage", url, "--quiet",
                             "--device", "cpu", "--threads", str(threads), "--cache-dir", str(cache)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--trials", type=int, default=8, help="KD trials per setting (default 8)")
    p.add_argument("--subset", type=int, default=30000,
                   help="training rows per trial (default 30000: trials of seconds, longer than a worker's start-up)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = p.parse_args()
    c.setup(args, "workers on one machine: trials per hour")
    cores = os.cpu_count() or 1
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for n in args.workers:
            name = f"bench-workers-{n}"
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(study(name, args.trials, args.subset)))
            url = f"sqlite:///{Path(tmp) / f'{name}.db'}"
            threads = max(1, cores // n)
            procs = [sweep(path, url, cache, threads)]
            db = Path(tmp) / f"{name}.db"
            while n > 1 and not db.exists() and procs[0].poll() is None:
                time.sleep(0.2)  # two processes creating a new store at once can race (table exists): stagger
            time.sleep(2.0 if n > 1 else 0.0)
            procs += [sweep(path, url, cache, threads) for _ in range(n - 1)]
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    sys.exit(f"worker failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
            runs = load_runs(url, name)
            span = (runs["finished"].max() - runs["started"].min()).total_seconds()
            rates[n] = len(runs) / span * 3600
            print(f"{n} worker(s) x {threads} thread(s): {len(runs)} trials in {span:.1f} s = "
                  f"{rates[n]:.0f} trials/hour  (load {c.load()})", flush=True)
    base = rates[args.workers[0]]
    for n in args.workers[1:]:
        print(f"scaling {args.workers[0]} -> {n} workers: x{rates[n] / base:.2f}")
    c.footer({"bench": "workers", "cores": cores, "trials_per_hour": rates})


if __name__ == "__main__":
    main()
