"""Teacher recipes for the quick study: training time and accuracy, side by side in one run (issue #27, item 2).

Each candidate is the quick study's teacher section (studies/fashion-mnist-quick.yaml) with some keys changed,
trained by :func:`kdbench.teacher.prepare_teacher` into a fresh cache on the quick study's own split (its seed),
one after the other, the shipped recipe first, each ``--repeats`` times (interleaved: every round trains every
candidate once). A candidate a study could adopt must clear the shipped one's validation accuracy or come close
(selection on validation); its test accuracy is printed once beside it, for issue #27's "≥ 91 % test" yardstick.
Times are the training alone (``Teacher.train_seconds``: the epochs and their validation passes, not the data
loading or the caching of the logits), medians over the repeats, and their ratio to the shipped recipe's.

    python bench/teacher_recipe.py              # 4 recipes, 1 round (about 5 minutes on a 2-core CPU)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import _common as c
import yaml

from kdbench.config import parse_study
from kdbench.data import load_study_data
from kdbench.teacher import prepare_teacher

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "fashion-mnist-quick.yaml"
CANDIDATES: dict[str, dict[str, Any]] = {  # name: the teacher keys changed from the shipped recipe
    "shipped (cnn-m, 3 epochs, batch 128, lr 2e-3)": {},
    "cnn-m, 2 epochs, lr 3e-3": {"epochs": 2, "lr": 3e-3},
    "cnn-m, 3 epochs, batch 256, lr 3e-3": {"batch_size": 256, "lr": 3e-3},
    "cnn-s, 3 epochs": {"model": "cnn-s"},
}


def main() -> None:
    p = c.parser(__doc__)
    p.set_defaults(repeats=1)
    args = p.parse_args()
    device = c.setup(args, "teacher recipes for the quick study: training seconds and accuracy")
    raw = yaml.safe_load(STUDY.read_text())
    studies = {name: parse_study({**raw, "teacher": {**raw["teacher"], **change}})
               for name, change in CANDIDATES.items()}
    first = next(iter(studies.values()))
    data = load_study_data(first.data, seed=first.seed, device=device, subset=False, folder=first.folder)
    runs: dict[str, list[Any]] = {name: [] for name in studies}
    for _ in range(args.repeats):
        for name, study in studies.items():
            with tempfile.TemporaryDirectory() as cache:  # a fresh cache: trained, never loaded
                runs[name].append(prepare_teacher(study, device=device, cache_dir=cache, data=data,
                                                  enforce_floor=False))
    base = c.median([t.train_seconds for t in runs[next(iter(runs))]])
    print(f"{'recipe':<46} {'train s':>8} {'ratio':>6} {'val %':>7} {'test %':>7}")
    summary = {}
    for name, teachers in runs.items():
        secs = c.median([t.train_seconds for t in teachers])
        val, test = teachers[-1].val_acc, teachers[-1].test_acc
        print(f"{name:<46} {secs:8.1f} {secs / base:6.2f} {100 * val:7.2f} {100 * test:7.2f}")
        summary[name] = {"train_s": secs, "ratio": secs / base, "val_acc": val, "test_acc": test}
    c.footer({"bench": "teacher_recipe", "recipes": summary, "repeats": args.repeats})


if __name__ == "__main__":
    main()
