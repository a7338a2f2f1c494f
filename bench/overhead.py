"""Harness overhead: one kdbench sweep trial against a bare training loop written here, side by side.

The sweep trial is the real code path (`run_sweep` on a temporary SQLite store: claim, Optuna ask,
store writes, heartbeat thread, per-epoch callback with the pruning check, tell); it is timed from the
claim's return to the end of `_run_visit`. The bare loop uses the same model (built with the same seed),
the same uint8 tensors on the device, the same cached teacher logits, steps, batch size, one validation
pass per epoch and the same numerics (bf16 autocast on CUDA, as kdbench's default `amp: true`; on the CPU
autocast is off on both sides), and writes nothing. Target: ratio <= 1.10.

    python bench/overhead.py            # mlp-800 student, 2 epochs of 3000 Fashion-MNIST rows, 5 repeats
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as c
import torch
import torch.nn.functional as F

import kdbench.sweep.run as sweep
from kdbench.config import parse_study
from kdbench.data import load_data, normalize
from kdbench.evaluate import autocast
from kdbench.models import build_model


def bare_loop(study, data, logits, lr: float, seed: int) -> float:  # type: ignore[no-untyped-def]
    """A hand-written KD loop; returns the validation accuracy."""
    torch.manual_seed(seed)
    info = data.info
    model = build_model(study.student.model, in_channels=info.channels, num_classes=info.num_classes,
                        image_size=info.image_size).to(data.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t, a = 4.0, 0.5
    gen = torch.Generator(device=data.device).manual_seed(seed)
    n = len(data.train)
    acc = 0.0
    for _ in range(study.student.epochs):
        model.train()
        for idx in torch.randperm(n, generator=gen, device=data.device).split(study.student.batch_size):
            x = normalize(data.train.images[idx], info)
            with autocast(data.device, True):  # what kdbench's recipe does (amp: true): bf16 on CUDA only
                out = model(x).float()
            ce = F.cross_entropy(out, data.train.labels[idx])
            kd = F.kl_div(F.log_softmax(out / t, -1), F.log_softmax(logits[idx].float() / t, -1),
                          reduction="batchmean", log_target=True) * t * t
            loss = a * ce + (1 - a) * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad(), autocast(data.device, True):
            pred = model(normalize(data.val.images, info)).argmax(1)
            acc = float((pred == data.val.labels).float().mean())
    return acc


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--subset", type=int, default=30000,
                   help="training rows (default 30000: 470 steps at 2 epochs, a third of a quick-study trial)")
    p.add_argument("--epochs", type=int, default=2, help="student epochs per trial (default 2)")
    p.add_argument("--student", default="mlp-800")
    p.set_defaults(repeats=5)
    args = p.parse_args()
    device = c.setup(args, "harness overhead: kdbench sweep trial / bare loop")
    study = parse_study({
        "name": "bench-overhead", "seed": 0,
        "data": {"dataset": "fashion-mnist", "val_fraction": 0.05, "subset": args.subset},
        "teacher": {"model": "cnn-s", "steps": 60, "lr": 3e-3, "min_accuracy": 0.3},
        "student": {"model": args.student, "epochs": args.epochs, "batch_size": 128},
        "search": {"temperature": [4], "alpha": [0.5], "replicates": args.repeats + 1,
                   "lr": [1e-3], "pruner": "median"},
        "baseline": {"ce": False}, "finalists": {"top_k": 0, "seeds": 1},
    })
    trial_s: list[float] = []
    orig_run_visit = sweep.run_visit

    def timed_run_visit(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return orig_run_visit(*a, **k)
        finally:
            c.sync(device)
            trial_s.append(time.perf_counter() - t0)

    sweep.run_visit = timed_run_visit  # the real code path, with a stopwatch around it
    data = load_data("fashion-mnist", val_fraction=0.05, subset=args.subset, seed=0, device=device)
    bare_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        run = lambda: sweep.run_sweep(study, storage=url, device=device, cache_dir=Path(tmp), max_visits=1)  # noqa: E731
        run()  # warm-up: trains and caches the teacher, first trial
        trial_s.clear()
        from kdbench.teacher import prepare_teacher
        logits = prepare_teacher(study, device=device, cache_dir=Path(tmp)).signal_for(data).logits[0]
        for r in range(args.repeats):  # interleaved, so load changes hit both sides alike
            bare_s.append(c.timed(lambda r=r: bare_loop(study, data, logits, 1e-3, r), device))
            run()
    ratio = c.median(trial_s) / c.median(bare_s)
    steps = args.epochs * -(-len(data.train) // 128)
    print(f"student {args.student}, {len(data.train)} rows, {steps} steps + {args.epochs} validation passes, "
          f"{args.repeats} repeats")
    print(f"  bare loop      median {c.median(bare_s):7.3f} s   all {[round(x, 3) for x in bare_s]}")
    print(f"  kdbench trial  median {c.median(trial_s):7.3f} s   all {[round(x, 3) for x in trial_s]}")
    print(f"  overhead ratio {ratio:.3f}  (target <= 1.10)")
    c.footer({"bench": "overhead", "ratio": round(ratio, 4), "bare_s": c.median(bare_s),
              "trial_s": c.median(trial_s), "device": str(device)})


if __name__ == "__main__":
    main()
