"""The cost of ``student.eval_every``: one validation pass against the training run it interrupts, side by side.

The quick study's student (mlp-800, 200 steps of 128 Fashion-MNIST images, Adam, one validation pass at the end)
is trained with kdbench's own loop (:func:`kdbench.train.train`), with and without ``eval_every``; one
validation pass (:func:`kdbench.evaluate.evaluate` on the 6,000 images of ``val_fraction: 0.1``) is timed on its
own. It prints each figure's median, what each ``eval_every`` adds to one run, and what it would add to the quick
study's search (its number of search runs, from its study file, times the extra passes).

    python bench/eval_cost.py                        # all cores, 3 repeats, eval_every 100, 50, 25
    python bench/eval_cost.py --threads 1 --every 50 20
"""

from __future__ import annotations

import math
from pathlib import Path

import _common as c
import torch

from kdbench.config import load_study
from kdbench.data import load_data
from kdbench.evaluate import evaluate
from kdbench.models import build_model
from kdbench.train import eval_points, train

QUICK = Path(__file__).resolve().parent.parent / "studies" / "fashion-mnist-quick.yaml"


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--every", type=int, nargs="+", default=[100, 50, 25], help="eval_every values to time")
    args = p.parse_args()
    device = c.setup(args, "eval_every: one validation pass / a 200-step training run (mlp-800, Fashion-MNIST)")
    study = load_study(QUICK)
    recipe = study.student
    data = load_data("fashion-mnist", val_fraction=study.data.val_fraction, seed=study.seed, device=device)
    info = data.info

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(recipe.model, in_channels=info.channels, num_classes=info.num_classes,
                           image_size=info.image_size).to(device)

    trained = model()
    train(trained, data, recipe, lr=1e-3, seed=0)  # warm-up: allocations, the first pass of everything
    run_s, pass_s = [], []
    grid_s: dict[int, list[float]] = {e: [] for e in args.every}
    for r in range(args.repeats):
        run_s.append(c.timed(lambda r=r: train(model(), data, recipe, lr=1e-3, seed=r), device))
        pass_s.append(c.timed(lambda: evaluate(trained, data.val, info, amp=recipe.amp), device))
        for e in args.every:
            grid_s[e].append(c.timed(lambda r=r, e=e: train(model(), data, recipe, lr=1e-3, seed=r, eval_every=e),
                                     device))
    run, one = c.median(run_s), c.median(pass_s)
    steps = recipe.steps or 0
    searches = study.search_visits
    print(f"# {len(data.val)} validation images, {steps} steps of {recipe.batch_size}, {searches} search runs in "
          f"{QUICK.name} (before any lr extension; finalists come on top)")
    print(f"  200-step run, one pass (today)  median {run:7.3f} s   all {[round(x, 3) for x in run_s]}")
    print(f"  one validation pass             median {one:7.3f} s   all {[round(x, 3) for x in pass_s]}  "
          f"= {one / run:.1%} of a run")
    summary: dict[str, object] = {"bench": "eval_cost", "run_s": run, "pass_s": one, "pass_per_run": one / run,
                                  "search_runs": searches, "device": str(device)}
    for e in args.every:
        extra = len(eval_points(math.ceil(len(data.train) / recipe.batch_size), steps, e)) - 1
        timed_run = c.median(grid_s[e])
        print(f"  eval_every {e:4d}: {extra:2d} extra passes, run median {timed_run:7.3f} s "
              f"({timed_run / run:.2f}x), estimate {extra * one:6.2f} s a run, {extra * one * searches / 60:5.1f} "
              f"min over the search on one worker")
        summary[f"every_{e}"] = {"extra_passes": extra, "run_s": timed_run, "ratio": timed_run / run,
                                 "search_extra_min": extra * one * searches / 60}
    c.footer(summary)


if __name__ == "__main__":
    main()
