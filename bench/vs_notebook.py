"""Against the notebook's recipe: a torchvision-style Dataset with per-sample PIL transforms through a
DataLoader and a teacher forward on every batch (../shared/seed/), against a kdbench trial with cached
logits. Same teacher weights, student, data rows, steps and batch size, side by side in one run.

The kdbench side pays once per sweep for the teacher's logits (one eval pass over the training rows);
that cost is printed apart, and amortised over a default sweep's 28 trials.

    python bench/vs_notebook.py                    # cnn-m -> mlp-800 (30 steps), resnet18 -> mlp-800 (3 steps)
    python bench/vs_notebook.py --device cuda --steps 200 --resnet-steps 100
"""

from __future__ import annotations

import time

import _common as c
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdbench.config import parse_study
from kdbench.data import load_data
from kdbench.evaluate import predict_logits
from kdbench.models import build_model
from kdbench.train import CachedLogits, KDParams, train

SWEEP_TRIALS = 28  # the default study: 20 grid points, 3 CE trials, 5 finalist seeds


class NotebookDataset(Dataset):  # type: ignore[type-arg]
    """What torchvision's FashionMNIST does per item: a PIL image through the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images.cpu()[:, 0].numpy(), labels.cpu().tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def notebook(teacher, student, data, steps: int, batch: int, device) -> None:  # type: ignore[no-untyped-def]
    info = data.info
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    loader = DataLoader(NotebookDataset(data.train.images, data.train.labels, tf), batch_size=batch, shuffle=True)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    teacher.eval()
    student.train()
    t, a = 4.0, 0.5
    done = 0
    while done < steps:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            s = student(images)
            with torch.no_grad():
                tl = teacher(images)
            kd = F.kl_div(F.log_softmax(s / t, 1), F.softmax(tl / t, 1), reduction="batchmean") * t * t
            loss = a * F.cross_entropy(s, labels) + (1 - a) * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                return


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--steps", type=int, default=30, help="steps for the cnn-m teacher pair (default 30)")
    p.add_argument("--resnet-steps", type=int, default=3, help="steps for the resnet18 teacher (default 3)")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    device = c.setup(args, "notebook recipe / kdbench trial with cached logits")
    rows = []
    for teacher_name, steps in (("cnn-m", args.steps), ("resnet18", args.resnet_steps)):
        data = load_data("fashion-mnist", val_fraction=0.05, subset=steps * args.batch_size, seed=0, device=device)
        info = data.info

        def build(name: str, size: int = info.image_size) -> torch.nn.Module:
            torch.manual_seed(0)
            return build_model(name, in_channels=1, num_classes=10, image_size=size).to(device)

        teacher = build(teacher_name)
        recipe = parse_study({"name": "b", "student": {"model": "mlp-800", "steps": steps,
                                                       "batch_size": args.batch_size}}).student
        c.sync(device)
        t0 = time.perf_counter()
        logits = CachedLogits(predict_logits(teacher, data.train.images, info).half()[None])
        c.sync(device)
        cache_s = time.perf_counter() - t0
        data.val = data.val.take(torch.arange(0))  # no validation pass on either side
        tn = c.median([c.timed(lambda teacher=teacher, data=data, steps=steps: notebook(
            teacher, build("mlp-800"), data, steps, args.batch_size, device), device) for _ in range(args.repeats)])
        tk = c.median([c.timed(lambda data=data, recipe=recipe, logits=logits: train(
            build("mlp-800"), data, recipe, kd=KDParams(4.0, 0.5), teacher=logits), device)
            for _ in range(args.repeats)])
        amort = tn / (tk + cache_s / SWEEP_TRIALS)
        rows.append({"teacher": teacher_name, "steps": steps, "notebook_s": tn, "kdbench_s": tk,
                     "cache_s": cache_s, "speedup": tn / tk, "speedup_amortised": amort})
        print(f"{teacher_name:9s} -> mlp-800, {steps} steps of {args.batch_size}: notebook {tn:.3f} s, kdbench "
              f"{tk:.3f} s, speed-up x{tn / tk:.1f} per trial (x{amort:.1f} with the logit cache, {cache_s:.2f} s, "
              f"shared by {SWEEP_TRIALS} trials)  (load {c.load()})", flush=True)
    c.footer({"bench": "vs_notebook", "device": str(device), "rows": rows})


if __name__ == "__main__":
    main()
