"""Two fixed costs of a sweep worker's trial, side by side in one run: the optimiser step and the collection.

1. An mlp-800 KD step of batch 128 (Hinton's loss, T = 4, alpha = 0.1) with Adam as torch's default loop,
   its foreach loop and its fused kernel (what ``kdbench.train.make_optimizer`` now picks on float CPU/CUDA
   parameters), interleaved: each round times every variant once.
2. ``gc.collect()`` in a process holding what a worker imports, before and after ``gc.freeze()`` (what
   ``kdbench.sweep.run.work_sweep`` does once set-up is done).
3. A CE training step of the convolutional zoo models (cnn-m at batch 128, the quick study's teacher; cnn-s;
   resnet8x4 at batch 64 on 3x32x32) in the contiguous format and in channels_last (what ``channels_last:
   auto`` now picks on the CPU as on CUDA), interleaved.

    python bench/step_costs.py            # 9 rounds of 20 steps per variant
"""

from __future__ import annotations

import gc

import _common as c
import torch
import torch.nn.functional as F

import kdbench.sweep.run  # noqa: F401  (what a worker holds: torch, Optuna, SQLAlchemy, kdbench)
from kdbench.models import build_model

VARIANTS = {"default loop": {}, "foreach": {"foreach": True}, "fused (kdbench)": {"fused": True}}


def main() -> None:
    p = c.parser(__doc__)
    p.set_defaults(repeats=9)
    args = p.parse_args()
    device = c.setup(args, "a trial's fixed costs: Adam's step variants, gc.collect before/after gc.freeze")
    x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    teacher = torch.randn(128, 10, device=device)
    states = {}
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        model = build_model("mlp-800", in_channels=1, num_classes=10, image_size=28).to(device)
        states[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3, **kw))

    def step(name: str) -> None:
        model, opt = states[name]
        out = model(x)
        kd = F.kl_div(F.log_softmax(out / 4, -1), F.log_softmax(teacher / 4, -1), reduction="batchmean",
                      log_target=True)
        loss = 0.1 * F.cross_entropy(out, y) + 0.9 * 16 * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ms: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for name in VARIANTS:
        for _ in range(5):
            step(name)
    for _ in range(args.repeats):
        for name in VARIANTS:
            ms[name].append(c.timed(lambda n=name: [step(n) for _ in range(20)], device) / 20 * 1000)
    base = c.median(ms["default loop"])
    for name, xs in ms.items():
        print(f"  Adam {name:16s} median {c.median(xs):7.2f} ms/step   x{base / c.median(xs):.2f} vs default")
    objects = len(gc.get_objects())
    before = [c.timed(gc.collect, torch.device("cpu")) * 1000 for _ in range(7)]
    gc.collect()
    gc.freeze()
    after = [c.timed(gc.collect, torch.device("cpu")) * 1000 for _ in range(7)]
    gc.unfreeze()
    print(f"  gc.collect over {objects} objects: median {c.median(before):.1f} ms; after gc.freeze "
          f"{c.median(after):.2f} ms")
    conv = conv_formats(device, max(3, args.repeats // 2))
    c.footer({"bench": "step_costs", "adam_ms": {k: round(c.median(v), 3) for k, v in ms.items()},
              "gc_ms_before": round(c.median(before), 2), "gc_ms_after": round(c.median(after), 3),
              "conv_ms": conv, "device": str(device)})


def conv_formats(device: torch.device, repeats: int) -> dict[str, dict[str, float]]:
    """A CE step of each convolutional zoo model, contiguous against channels_last, interleaved: median ms."""
    out: dict[str, dict[str, float]] = {}
    for name, batch, shape in (("cnn-m", 128, (1, 28)), ("cnn-s", 128, (1, 28)), ("resnet8x4", 64, (3, 32))):
        x = torch.randn(batch, shape[0], shape[1], shape[1], device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        steps = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            model = build_model(name, in_channels=shape[0], num_classes=10, image_size=shape[1]).to(device)
            model = model.to(memory_format=fmt)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
            xs = x.contiguous(memory_format=fmt)

            def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt,
                     xs: torch.Tensor = xs, y: torch.Tensor = y) -> None:
                loss = F.cross_entropy(model(xs), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            steps[str(fmt).removeprefix("torch.")] = step
        ms: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(repeats):
            for fmt, step in steps.items():
                ms[fmt].append(c.timed(lambda s=step: [s() for _ in range(4)], device) / 4 * 1000)
        med = {k: round(c.median(v), 2) for k, v in ms.items()}
        print(f"  {name} CE step: contiguous {med['contiguous_format']:.1f} ms, channels_last "
              f"{med['channels_last']:.1f} ms: x{med['channels_last'] / med['contiguous_format']:.2f}")
        out[name] = med
    return out


if __name__ == "__main__":
    main()
