"""What every benchmark prints first and last: provenance, machine load, medians and ratios."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch

from kdbench.provenance import provenance

FMNIST_ROOT = None  # kdbench's own search (data.root, $KDBENCH_DATA, ./data, /usr/share/datasets)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: --device, --threads, --repeats."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    return p


def setup(args: argparse.Namespace, title: str) -> torch.device:
    """Set threads, print the provenance header; returns the device."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {title}")
    prov = provenance(device)
    print(f"# commit {prov['commit']}  device {prov['device']}  torch threads {torch.get_num_threads()}")
    print(f"# versions {json.dumps(prov['versions'], sort_keys=True)}")
    print(f"# load average at start {load()}  (the machine may be shared: read ratios, not absolute times)")
    return device


def load() -> str:
    """The 1/5/15-minute load averages, formatted."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the GPU's queue drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    """The median (the middle of an odd number of repeats)."""
    return statistics.median(xs)


def footer(summary: dict[str, Any]) -> None:
    """The load at the end and one JSON line with the figures, for scripts that collect them."""
    print(f"# load average at end {load()}")
    print("RESULT " + json.dumps(summary, sort_keys=True))
