"""``kdbench sweep --workers N``: N worker processes on this machine sharing one study through the store.

The parent prepares the study once (registers it, trains or loads the teacher), then starts N
``kdbench sweep --quiet`` processes, each with ``max(1, cores // N)`` torch threads unless told
otherwise. They split the visits through the store's claims, exactly as separate ``kdbench sweep``
commands would. The parent relays their lines and shows the study's progress from the store. Each
worker runs in its own process group, so a Ctrl-C reaches only the parent, which passes one SIGINT to
every worker (each records its trial as interrupted) and waits for them; a worker whose parent dies is
sent SIGINT too (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.config import Study
from kdbench.defaults import POLL_S
from kdbench.errors import KdbenchError
from kdbench.store import Store
from kdbench.sweep import SweepEvents, study_progress

__all__ = ["WorkerError", "cpu_cores", "die_with_parent", "run_workers", "sweep_workers", "watch",
           "worker_threads"]

STOP_GRACE_S = 60.0  # seconds a worker gets to record its interrupted trial before it is killed


class WorkerError(KdbenchError):
    """A worker process ended with an error."""


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_threads(workers: int, threads: int | None = None) -> int:
    """Torch threads per worker: ``threads`` if given, else ``max(1, cores // workers)``."""
    return threads if threads is not None else max(1, cpu_cores() // workers)


def die_with_parent() -> None:
    """In a child before it runs (``preexec_fn``): SIGINT back to the default, and SIGINT when the parent dies."""
    # the parent stops its workers with SIGINT: a worker must not inherit an ignored SIGINT (as every
    # command started with `&` from a non-interactive shell does)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):  # PR_SET_PDEATHSIG: SIGINT when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)


def watch(running: Callable[[], bool], store: Store, study: Study, events: SweepEvents, *,
          every: Callable[[], None] = lambda: None, tick_s: float = 0.2) -> None:
    """Wait while ``running()``: ``every()`` each ``tick_s`` seconds, the study's progress from the store each
    :data:`~kdbench.defaults.POLL_S`."""
    next_poll = 0.0
    while running():
        every()
        if time.monotonic() >= next_poll:
            events.on_progress(study_progress(store, study))
            next_poll = time.monotonic() + POLL_S
        time.sleep(tick_s)


def _relay(i: int, proc: subprocess.Popen[str], lines: queue.Queue[tuple[int, str]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put((i, line.rstrip("\n")))


def run_workers(
    study: Study,
    worker_args: list[str],
    *,
    workers: int,
    store: Store,
    events: SweepEvents,
    prepare: Callable[[], object],
    storage_url: str | None = None,
) -> None:
    """Prepare the study, run ``workers`` worker processes to the end, relaying their output.

    Args:
        study: the validated study (for progress).
        worker_args: the ``kdbench sweep`` arguments of one worker (study file, storage, threads, ...).
        workers: how many processes.
        store: the results database, polled for progress.
        events: progress hooks (``on_progress``, ``on_log``, ``on_status``).
        prepare: registers the study and caches the teacher before the workers start.
        storage_url: the database's URL, passed to the workers in their environment ($KDBENCH_STORAGE).

    Raises:
        KeyboardInterrupt: after Ctrl-C, once every worker has stopped.
        WorkerError: a worker exited with an error (its last line is in the message).
    """
    prepare()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if storage_url is not None:  # not in argv, where `ps` would show a password to every user
        env["KDBENCH_STORAGE"] = storage_url
    cmd = [sys.executable, "-m", "kdbench", "sweep", *worker_args]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True, preexec_fn=die_with_parent) for _ in range(workers)]
    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    relays = [threading.Thread(target=_relay, args=(i, p, lines), daemon=True) for i, p in enumerate(procs)]
    for t in relays:
        t.start()
    last: dict[int, str] = {}

    def drain() -> None:
        while not lines.empty():
            i, line = lines.get()
            last[i] = line
            events.on_log(f"w{i + 1}: {line}")

    events.on_status(f"{workers} workers (pids {', '.join(str(p.pid) for p in procs)})")
    try:
        watch(lambda: any(p.poll() is None for p in procs), store, study, events, every=drain)
    except KeyboardInterrupt:
        events.on_status("stopping the workers (each records its trial as interrupted)")
        _stop(procs)
        raise
    finally:
        for t in relays:
            t.join(timeout=5)
        drain()
    events.on_progress(study_progress(store, study))
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        i, rc = failed[0]
        raise WorkerError(f"worker {i + 1} of {workers} exited with status {rc}: {last.get(i, 'no output')}")


def sweep_workers(
    study: Study,
    study_file: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    workers: int,
    store: Store,
    storage_url: str,
    device: str,
    here: Any,
    events: SweepEvents,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    max_visits: int | None = None,
    replace: bool = False,
) -> None:
    """``kdbench sweep STUDY_FILE --workers N``: prepare the study here (checks, teacher, registration; ``replace``
    drops a stored study of the same name once all is checked), then run it on ``workers`` processes that each
    read ``study_file`` with ``overrides`` (so the study must be a file: objects do not cross processes).

    Args:
        study: the validated study read from ``study_file`` with ``overrides``.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``, as each worker is told.
        here: the ``torch.device`` this process prepares the study on (:func:`kdbench.train.setup_device`).
        threads: torch threads per worker (default: cores // workers).
        other arguments: as :func:`kdbench.sweep.run_sweep`'s.
    """
    from kdbench.sweep import prepare_sweep

    args = [str(study_file), "--quiet", "--as-worker", "--device", device,  # --storage: by environment
            "--threads", str(worker_threads(workers, threads)),
            *(f"--set={o}" for o in overrides), *(["--cache-dir", str(cache_dir)] if cache_dir else []),
            *(["--max-visits", str(max_visits)] if max_visits else [])]
    run_workers(study, args, workers=workers, store=store, events=events, storage_url=storage_url,
                prepare=lambda: prepare_sweep(study, storage=store, device=here, cache_dir=cache_dir, events=events,
                                              replace=replace))


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()  # its visit is reclaimed as a dead worker's on the next sweep
            p.wait()
