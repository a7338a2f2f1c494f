"""Memory: peak resident memory of a sweep worker against what it must hold.

Runs one `kdbench sweep` worker (default study shape: full Fashion-MNIST, cnn-m teacher cache, mlp-800
student) as a child process and reads its peak RSS, then sets it beside: the dataset's uint8 tensors
(train + val + test), the cached teacher logits, the student's state (weights, grads, Adam's two
moments), the teacher model, and the peak RSS of a process that only imports kdbench's libraries.

    python bench/memory.py              # 2 short KD trials, teacher trained for 100 steps
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as c
import yaml

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20


def child_peak_mb(args: list[str]) -> float:
    """Peak RSS (MiB) of one child process: run it under a fresh `python -c` that waits for it."""
    code = ("import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # Linux reports KiB


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--student", default="mlp-800")
    args = p.parse_args()
    c.setup(args, "memory: sweep worker peak RSS vs data + logits + models")
    import torch

    from kdbench.config import parse_study
    from kdbench.data import load_data
    from kdbench.models import build_model, count_parameters

    raw = {"name": "bench-memory", "data": {"dataset": "fashion-mnist", "val_fraction": 0.1},
           "teacher": {"model": "cnn-m", "steps": 100}, "student": {"model": args.student, "steps": 100},
           "search": {"temperature": [4], "alpha": [0.5], "lr": [1e-3], "replicates": 2},
           "baseline": {"ce": False}, "finalists": {"top_k": 0, "seeds": 1}}
    study = parse_study(raw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_text(yaml.safe_dump(raw))
        worker = child_peak_mb([sys.executable, "-m", "kdbench", "sweep", str(path), "--quiet", "--device", "cpu",
                                "--threads", str(args.threads), "--storage", f"sqlite:///{tmp}/m.db",
                                "--cache-dir", f"{tmp}/cache"])
    libs = child_peak_mb([sys.executable, "-c", "import torch, torchvision, optuna, sqlalchemy, pandas, pydantic, "
                          "kdbench.sweep"])
    data = load_data("fashion-mnist", val_fraction=0.1, seed=0)
    data_mb = sum(s.images.nbytes + s.labels.nbytes for s in (data.train, data.val, data.test)) / MB
    logits_mb = len(data.train) * data.info.num_classes * 2 / MB  # float16, one view
    info = data.info
    student = count_parameters(build_model(study.student.model, in_channels=1, num_classes=10,
                                           image_size=info.image_size))
    teacher = count_parameters(build_model(study.teacher.model, in_channels=1, num_classes=10,
                                           image_size=info.image_size))
    student_mb, teacher_mb = student * 4 * 4 / MB, teacher * 4 / MB  # student: weights, grads, 2 Adam moments
    held = data_mb + logits_mb + student_mb + teacher_mb
    print(f"sweep worker peak RSS       {worker:8.1f} MiB")
    print(f"  libraries imported only   {libs:8.1f} MiB   (python, torch, optuna, sqlalchemy, pandas, ...)")
    print(f"  dataset uint8 tensors     {data_mb:8.1f} MiB   (train {len(data.train)}, val {len(data.val)}, "
          f"test {len(data.test)})")
    print(f"  cached teacher logits     {logits_mb:8.1f} MiB   (float16)")
    print(f"  student state             {student_mb:8.1f} MiB   ({student} params: weights, grads, Adam m, v)")
    print(f"  teacher weights           {teacher_mb:8.1f} MiB")
    gap = worker - libs - held
    print(f"  gap                       {gap:8.1f} MiB   = worker - libraries - held; activations, the raw arrays "
          f"read from the .gz files while loading, the validation logits, allocator slack")
    c.footer({"bench": "memory", "worker_mb": worker, "libraries_mb": libs, "held_mb": held, "gap_mb": gap,
              "torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
