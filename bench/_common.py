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
FOREIGN_CORES_ALLOWED = 0.25  # cores other processes may keep busy (mean over a run) before its ratios are flagged
_START: dict[str, float] = {}


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
    _START.update(_cpu_snapshot(), wall=time.perf_counter())
    time.sleep(1.0)  # one idle second: what the others use now (the load average still holds the last minute)
    now = quietness()["foreign_cores"]
    if now > FOREIGN_CORES_ALLOWED:
        print(f"# WARNING: other processes keep {now:.2f} cores busy at the start (allowed {FOREIGN_CORES_ALLOWED}): "
              "the figures below will be flagged unless the machine quietens; rerun when it is quiet")
    _START.update(_cpu_snapshot(), wall=time.perf_counter())
    return device


def _cpu_snapshot() -> dict[str, float]:
    """Machine-wide busy and stolen CPU seconds (/proc/stat) and this process's own, children included."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    hz = os.sysconf("SC_CLK_TCK")
    t = os.times()
    return {"busy": (user + nice + system + irq + softirq) / hz, "steal": steal / hz,
            "own": t.user + t.system + t.children_user + t.children_system}


def quietness() -> dict[str, float | bool]:
    """How quiet the machine was since :func:`setup`: the cores that other processes kept busy on average
    (machine busy time minus this process's and its children's), the cores the hypervisor stole, and
    whether that stays within :data:`FOREIGN_CORES_ALLOWED`."""
    now = _cpu_snapshot()
    wall = max(1e-9, time.perf_counter() - _START["wall"])
    foreign = max(0.0, (now["busy"] - _START["busy"]) - (now["own"] - _START["own"])) / wall
    stolen = (now["steal"] - _START["steal"]) / wall
    return {"foreign_cores": round(foreign, 3), "stolen_cores": round(stolen, 3),
            "quiet": foreign + stolen <= FOREIGN_CORES_ALLOWED}


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
    """The load at the end, how quiet the run was, and one JSON line with the figures (flagged when not quiet)."""
    q = quietness()
    print(f"# load average at end {load()}; other processes kept {q['foreign_cores']:.2f} cores busy on average, "
          f"the hypervisor stole {q['stolen_cores']:.2f} (allowed together: {FOREIGN_CORES_ALLOWED})")
    if not q["quiet"]:
        print("# NOT QUIET: other work ran beside this benchmark; its ratios are not figures to publish. Rerun it "
              "when the machine is quiet.")
    print("RESULT " + json.dumps({**summary, **q}, sort_keys=True))
