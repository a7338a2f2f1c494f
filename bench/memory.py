"""Memory: a sweep worker's peak resident memory, itemised, against what it must hold.

Runs two `kdbench sweep` processes on one study (full Fashion-MNIST, cnn-m teacher, mlp-800 student):
the *first worker*, which trains and caches the teacher and runs one trial, then a *joining worker*
(`--as-worker`, as `--workers N` and other machines start them: teacher cached, no end-of-run summary)
that runs the other trials. Each one's peak RSS is read by a parent that waits for it. Beside them:

- the libraries, imported one after the other in a fresh process (RSS after each);
- the data a worker must hold: the dataset's uint8 tensors, the cached teacher logits, the student's state;
- the target of issue #16: a joining worker within 150 MiB of `import torch` + data + logits; and the
  floor of any PyTorch training script (`import torch` and a first `torch.optim` step, which imports
  torch._dynamo) + data + logits, for comparison (issue #27's yardstick: the worker within 100 MiB of it);
- a plain PyTorch script doing a joining worker's job, measured the same way (:data:`PLAIN`: the IDX files
  read with gzip and numpy, the same split sizes, float16 logits for every training row, mlp-800 trained with
  Adam on Hinton's loss for the same steps, validation at the end, no kdbench, no database): the floor
  above plus what any training run holds (the student's weights, gradients and Adam's moments, a batch's
  activations, an evaluation batch), which the computed floor leaves out;
- the floor measured as a process (:data:`FLOOR`: `import torch`, a first `torch.optim` step, the data's bytes
  and the logits, then exit), the same way as the workers: issue #27's yardstick. The computed floor reads RSS
  inside one process before it exits, but a process's peak (``ru_maxrss``) also holds the library code its exit
  touches: at interpreter exit libtorch's static destructors fault in ~100 MiB of its shared, file-backed code
  pages (RssFile rises, RssAnon does not), in every PyTorch process, the plain script's too.

Each process's peak is read three ways by a small parent that waits for it: ``ru_maxrss`` (what ``time -v`` and
schedulers report), and the highest RssAnon (its private memory) and RssFile (mapped library and file pages,
shared with every other process that maps them) seen by sampling ``/proc/PID/status`` every 5 ms.

    python bench/memory.py              # teacher trained for 100 steps, 4 KD trials of 100 steps
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import _common as c
import yaml

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20
TARGET_MIB = 150  # issue #16: worker peak within this of import torch + data + logits
FLOOR_MARGIN_MIB = 100  # issue #27: worker peak within this of the floor measured as a process

# any PyTorch training script's first optimiser step (it imports torch._dynamo): in the steps and in the floor
OPTIM_STEP = ("m = torch.nn.Linear(2, 2); o = torch.optim.Adam(m.parameters()); m(torch.ones(1, 2)).sum().backward(); "
              "o.step()")
# imported cumulatively in one process; the RSS after each step is its share
STEPS = [
    ("python", "pass"),
    ("torch", "import torch"),
    ("torch.optim first step (imports torch._dynamo)", OPTIM_STEP),
    ("sqlalchemy", "import sqlalchemy"),
    ("optuna", "import optuna"),
    ("pandas", "import pandas"),
    ("PIL (image folders)", "import PIL.Image"),
    ("kdbench.sweep (its own modules, pydantic, yaml)", "import kdbench.sweep, kdbench.cli"),
    ("scipy + statsmodels (end-of-run summary only)", "import kdbench.report.grid"),
    ("matplotlib + seaborn + jinja2 (report only)", "import kdbench.report.render"),
]


PLAIN = """
import gzip, sys
import numpy as np, torch, torch.nn.functional as F
folder, steps = sys.argv[1], int(sys.argv[2])
def idx(name, offset):
    with gzip.open(f"{folder}/{name}.gz") as f:
        return torch.from_numpy(np.frombuffer(f.read(), np.uint8, offset=offset).copy())
x = idx("train-images-idx3-ubyte", 16).view(-1, 1, 28, 28); y = idx("train-labels-idx1-ubyte", 8).long()
test_x = idx("t10k-images-idx3-ubyte", 16).view(-1, 1, 28, 28); test_y = idx("t10k-labels-idx1-ubyte", 8).long()
perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
val_x, val_y, x, y = x[perm[:6000]], y[perm[:6000]], x[perm[6000:]], y[perm[6000:]]
logits = torch.randn(len(x), 10).half()  # the teacher's cached logits: float16, one row per training image
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 800), torch.nn.ReLU(), torch.nn.Linear(800, 800),
                            torch.nn.ReLU(), torch.nn.Linear(800, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
order = torch.randperm(len(x))
for i in range(steps):
    rows = order[i * 128:(i + 1) * 128]
    out = model((x[rows].float() / 255 - 0.286) / 0.353)
    kd = F.kl_div(F.log_softmax(out / 4, 1), F.log_softmax(logits[rows].float() / 4, 1), reduction="batchmean",
                  log_target=True)
    loss = 0.5 * F.cross_entropy(out, y[rows]) + 0.5 * 16 * kd
    opt.zero_grad(); loss.backward(); opt.step()
model.eval()
with torch.no_grad():
    acc = sum((model((val_x[i:i + 1024].float() / 255 - 0.286) / 0.353).argmax(1) == val_y[i:i + 1024]).sum()
              for i in range(0, 6000, 1024))
print(int(acc))
"""

# the floor as a process: torch, a first optimiser step, and the bytes a worker must hold (touched), then exit
FLOOR = f"""
import sys
import torch
{OPTIM_STEP}
data = torch.ones(int(sys.argv[1]), dtype=torch.uint8)
logits = torch.ones(int(sys.argv[2]), 10, dtype=torch.float16)
"""

# the parent that waits for one process: it holds no torch, so the child's ru_maxrss carries none across exec
WATCH = """
import json, resource, subprocess, sys, time
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
anon = file = 0
while proc.poll() is None:
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            st = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssFile")))
        anon, file = max(anon, int(st["RssAnon"].split()[0])), max(file, int(st["RssFile"].split()[0]))
    except (OSError, KeyError, ValueError):  # not started yet, or gone
        pass
    time.sleep(0.005)
assert proc.returncode == 0, proc.returncode
print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, anon, file]))
"""


@dataclass(frozen=True)
class Peak:
    """One process's peaks, MiB: ``ru_maxrss``, and the highest RssAnon and RssFile sampled."""

    rss: float
    anon: float
    file: float

    def __str__(self) -> str:
        return f"peak {self.rss:8.1f} MiB  (private {self.anon:6.1f}, library and file pages {self.file:6.1f})"


def child_peak(args: list[str]) -> Peak:
    """The peaks of one child process, read by a fresh `python -c` (:data:`WATCH`) that waits for it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", WATCH, *args], env=env, capture_output=True, text=True, check=True)
    rss, anon, file = json.loads(out.stdout.strip().splitlines()[-1])
    return Peak(rss / 1024, anon / 1024, file / 1024)  # Linux reports KiB


def library_steps() -> list[tuple[str, float]]:
    """(step, RSS in MiB after it) for :data:`STEPS`, in one fresh process."""
    lines = ["import sys", "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20"]
    for i, (_, stmt) in enumerate(STEPS):
        lines += [stmt, f"print({i}, rss(), flush=True)"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", "\n".join(lines)], env=env, capture_output=True, text=True,
                         check=True)
    rss = [float(line.split()[1]) for line in out.stdout.strip().splitlines()]
    return [(name, r) for (name, _), r in zip(STEPS, rss, strict=True)]


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--student", default="mlp-800")
    args = p.parse_args()
    c.setup(args, "memory: sweep worker peak RSS vs data + logits + libraries")
    import torch

    from kdbench.config import parse_study
    from kdbench.data import load_data
    from kdbench.models import build_model, count_parameters

    raw = {"name": "bench-memory", "data": {"dataset": "fashion-mnist", "val_fraction": 0.1},
           "teacher": {"model": "cnn-m", "steps": 100}, "student": {"model": args.student, "steps": 100},
           "search": {"temperature": [2, 4], "alpha": [0.5], "lr": [1e-3], "replicates": 2},
           "baseline": {"ce": False}, "finalists": {"top_k": 0, "seeds": 1}}
    study = parse_study(raw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_text(yaml.safe_dump(raw))
        common = [sys.executable, "-m", "kdbench", "sweep", str(path), "--quiet", "--device", "cpu",
                  "--threads", str(args.threads), "--storage", f"sqlite:///{tmp}/m.db", "--cache-dir", f"{tmp}/cache"]
        first = child_peak([*common, "--max-visits", "1"])
        joining = child_peak([*common, "--as-worker"])
    steps = library_steps()
    data = load_data("fashion-mnist", val_fraction=0.1, seed=0)
    idx_dirs = [d for d in ((data.root / "fashion-mnist", data.root) if data.root is not None else ())
                if (d / "train-images-idx3-ubyte.gz").exists()]  # the IDX files, where load_data found them
    plain = child_peak([sys.executable, "-c", PLAIN, str(idx_dirs[0]), str(study.student.steps)]) \
        if idx_dirs else None
    data_bytes = sum(s.images.nbytes + s.labels.nbytes for s in (data.train, data.val, data.test))
    data_mb = data_bytes / MB
    logits_mb = len(data.train) * data.info.num_classes * 2 / MB  # float16, one view
    floor_proc = child_peak([sys.executable, "-c", FLOOR, str(data_bytes), str(len(data.train))])
    info = data.info
    student = count_parameters(build_model(study.student.model, in_channels=1, num_classes=10,
                                           image_size=info.image_size))
    student_mb = student * 4 * 4 / MB  # weights, grads, Adam's 2 moments
    rss = dict(steps)
    torch_mb = rss["torch"]
    optim_mb = rss["torch.optim first step (imports torch._dynamo)"]
    print(f"first worker (trains the teacher)   {first}")
    print(f"joining worker (teacher cached)     {joining}")
    print("libraries, imported one after the other (RSS after each, and its share):")
    before = 0.0
    for name, r in steps:
        print(f"  {name:<52} {r:8.1f} MiB  (+{r - before:6.1f})")
        before = r
    print(f"held: dataset uint8 tensors {data_mb:.1f} MiB (train {len(data.train)}, val {len(data.val)}, "
          f"test {len(data.test)}), cached logits {logits_mb:.1f} MiB (float16), student state {student_mb:.1f} MiB "
          f"({student} params: weights, grads, Adam m, v)")
    target = torch_mb + data_mb + logits_mb + TARGET_MIB
    floor = optim_mb + data_mb + logits_mb
    verdict = "met" if joining.rss <= target else "NOT met"
    print(f"target (issue #16): joining worker <= import torch + data + logits + {TARGET_MIB} = {target:.1f} MiB: "
          f"{verdict} ({joining.rss - torch_mb - data_mb - logits_mb:+.1f} MiB over torch + data + logits)")
    print(f"the floor computed in one process before it exits (torch + a torch.optim step + data + logits = "
          f"{floor:.1f} MiB): the joining worker {joining.rss - floor:+.1f} MiB over it (the worker's peak holds "
          "its exit, this sum does not)")
    print(f"the floor as a process, measured as the workers are (torch, a torch.optim step, data, logits, exit): "
          f"{floor_proc}")
    met = "met" if joining.rss - floor_proc.rss <= FLOOR_MARGIN_MIB else "NOT met"
    print(f"  issue #27 (the joining worker within +{FLOOR_MARGIN_MIB} MiB of it): peak "
          f"{joining.rss - floor_proc.rss:+.1f} MiB, private {joining.anon - floor_proc.anon:+.1f} MiB: {met}")
    if plain is not None:
        print(f"a plain PyTorch script doing the joining worker's job (no kdbench; measured): {plain}")
        print(f"  the joining worker over it: peak {joining.rss - plain.rss:+.1f} MiB, private "
              f"{joining.anon - plain.anon:+.1f} MiB")
    c.footer({"bench": "memory", "first_worker_mb": first.rss, "joining_worker_mb": joining.rss,
              "joining_worker_private_mb": joining.anon, "joining_worker_file_mb": joining.file, "torch_mb": torch_mb,
              "torch_optim_mb": optim_mb, "data_mb": data_mb, "logits_mb": logits_mb, "target_mb": target,
              "target_met": joining.rss <= target, "floor_computed_mb": floor, "floor_process_mb": floor_proc.rss,
              "floor_process_private_mb": floor_proc.anon, "plain_script_mb": plain and plain.rss,
              "plain_script_private_mb": plain and plain.anon, "libraries": dict(steps),
              "torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
