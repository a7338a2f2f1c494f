"""Fused students: students x samples per second for K = 1, 4, 8, 16 fused against K sequential trials.

Both sides run the same recipe (Adam, batch 128, KD with cached logits, K different (T, alpha, lr)) for
the same number of steps on the same Fashion-MNIST rows, no validation pass (it is not what is fused).

    python bench/fused.py                                 # cnn-s and mlp-800, K = 1 4 8 16, 10 steps
    python bench/fused.py --device cuda --steps 200       # the GPU figures
"""

from __future__ import annotations

import dataclasses

import _common as c
import torch

from kdbench.config import parse_study
from kdbench.data import load_data
from kdbench.fused import FusedStudent, train_fused
from kdbench.models import build_model
from kdbench.train import CachedLogits, KDParams, train


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["cnn-s", "mlp-800"])
    p.add_argument("--ks", nargs="+", type=int, default=[1, 4, 8, 16])
    p.add_argument("--steps", type=int, default=10, help="optimiser steps per trial (default 10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.set_defaults(repeats=1)
    args = p.parse_args()
    device = c.setup(args, "fused students: students*samples/s, fused vs sequential")
    data = load_data("fashion-mnist", val_fraction=0.05, subset=args.steps * args.batch_size, seed=0, device=device)
    data = dataclasses.replace(data, val=data.val.take(torch.arange(0)))
    logits = CachedLogits(torch.randn(1, len(data.train), 10, device=device).half())
    info = data.info
    out = []
    for name in args.models:
        recipe = parse_study({"name": "b", "student": {"model": name, "steps": args.steps,
                                                       "batch_size": args.batch_size}}).student

        def models(k: int, name: str = name) -> list[torch.nn.Module]:
            torch.manual_seed(0)
            return [build_model(name, in_channels=info.channels, num_classes=info.num_classes,
                                image_size=info.image_size).to(device) for _ in range(k)]

        def students(k: int) -> list[FusedStudent]:
            return [FusedStudent(1e-3 * (1 + i % 3), KDParams(2.0 ** (i % 4), 0.1 + 0.2 * (i % 5))) for i in range(k)]

        def fused(k: int, recipe=recipe) -> None:  # type: ignore[no-untyped-def]
            train_fused(models(k), data, recipe, students(k), teacher=logits)

        def sequential(k: int, recipe=recipe) -> None:  # type: ignore[no-untyped-def]
            for m, s in zip(models(k), students(k), strict=True):
                train(m, data, recipe, lr=s.lr, kd=s.kd, teacher=logits)

        fused(2)  # warm-up (allocator, kernels)
        for k in args.ks:
            tf = c.median([c.timed(lambda k=k: fused(k), device) for _ in range(args.repeats)])
            ts = c.median([c.timed(lambda k=k: sequential(k), device) for _ in range(args.repeats)])
            work = k * args.steps * args.batch_size
            row = {"model": name, "K": k, "fused_sps": work / tf, "sequential_sps": work / ts, "speedup": ts / tf}
            out.append(row)
            print(f"{name:8s} K={k:3d}  fused {work / tf:10.0f}  sequential {work / ts:10.0f} students*samples/s"
                  f"  speed-up x{ts / tf:.2f}   (load {c.load()})", flush=True)
    c.footer({"bench": "fused", "device": str(device), "rows": out})


if __name__ == "__main__":
    main()
