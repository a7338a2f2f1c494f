"""A whole study end to end, as `kdbench sweep` runs it, timed inside one Python process after its imports.

The clock covers what a user waits for after start-up: data, teacher (trained: a fresh cache by default),
CE and every search visit, finalists, and the end-of-run summary, through the real CLI (`kdbench.cli.main`).
Python's start-up, the imports and (on CUDA) the creation of the CUDA context are before the clock. Then it
reads the store: the teacher's training time, the search's and finalists' summed trial times, and how the
search visits were trained (the stored device says "fused xK").

    python bench/end_to_end.py studies/fashion-mnist-quick.yaml --device cuda --storage sqlite:///quick.db
"""

from __future__ import annotations

import tempfile
import time

import _common as c
import torch


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("study", help="the study file")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (default: a SQLite file in a temporary folder)")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default: a fresh temporary folder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, as kdbench sweep --set")
    args = p.parse_args()
    device = c.setup(args, f"end to end: kdbench sweep {args.study} on {args.device}")
    import kdbench.cli
    import kdbench.report.effects
    import kdbench.report.grid
    import kdbench.sweep  # (these imports before the clock)
    from kdbench.config import load_study
    from kdbench.store import Store

    if device.type == "cuda":
        torch.zeros(1, device=device).sum().item()  # the CUDA context, before the clock
    study = load_study(args.study, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{tmp}/e2e.db"
        cache = args.cache_dir or f"{tmp}/cache"
        argv = ["sweep", args.study, "--device", args.device, "--storage", url, "--cache-dir", cache, "--quiet",
                "--threads", str(args.threads), *(f"--set={o}" for o in args.overrides)]
        t0 = time.perf_counter()
        kdbench.cli.main(argv, standalone_mode=False)
        wall = time.perf_counter() - t0
        store = Store.open(url, create=False)
        runs = store.runs(study.name)
        teacher = store.study_teacher(study.name)
    search = runs[runs["kind"].isin(["kd", "ce"]) & (runs["state"] == "complete")]
    finalists = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete")]
    teacher_s = teacher.train_seconds if teacher is not None and teacher.train_seconds else 0.0
    print(f"end to end {wall:.1f} s wall (start-up, imports and CUDA context excluded)")
    print(f"  teacher trained in {teacher_s:.1f} s")
    print(f"  search: {len(search)} runs, {search['wall_time_s'].sum():.1f} s summed trial time; trained as "
          f"{dict(search['device'].value_counts())}")
    print(f"  finalists: {len(finalists)} runs, {finalists['wall_time_s'].sum():.1f} s summed")
    print(f"  runs by state: {dict(runs['state'].value_counts())}")
    c.footer({"bench": "end_to_end", "study": study.name, "device": str(device), "wall_s": round(wall, 2),
              "teacher_s": teacher_s, "runs": len(runs), "search_runs": len(search), "finalists": len(finalists)})


if __name__ == "__main__":
    main()
