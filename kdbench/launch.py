"""Launchers: who starts the workers of ``kdbench sweep --workers N``, and where.

A launcher only starts and watches workers; each worker is ``kdbench sweep --join NAME --as-worker`` (the study
from the store, :mod:`kdbench.join`), and the workers share the study through the store's claims exactly as
separate ``kdbench sweep`` commands do. The parent prepares the study once (checks, teacher, registration), checks
that a worker can join it from this folder, starts the workers, and shows the study's progress from the store.

* ``local``: processes on this machine (:func:`kdbench.workers.run_workers`), the default;
* ``slurm``: one job-array task per worker through submitit (``AutoExecutor``; ``cluster="local"`` runs the same
  code path as processes here). SLURM's SIGTERM (``scancel``, preemption) reaches every process of a task: its
  worker records its visit as interrupted, which the next claim of it resumes. Before a time limit submitit sends
  USR2: the worker is stopped the same way, then the task is requeued (:class:`WorkerCommand` is checkpointable),
  and its new worker resumes where the study is;
* ``ray``: one Ray task per worker holding ``gpus_per_worker`` GPUs, on ``ray.init(address=...)`` or a cluster
  started on this machine for the sweep.

The storage URL reaches each worker in its environment (``$KDBENCH_STORAGE``), never its arguments; submitit keeps
it in its job folder's pickles (readable by their owner only, as SLURM's own job files are). The Optuna proxy's
address (``--optuna-proxy``) travels the same way, inside the pickled command, so a Ray cluster started before the
sweep (whose workers have their own environment) gets it too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdbench.config import LauncherConfig, Study
from kdbench.defaults import RAY_CONNECT_S
from kdbench.errors import ConfigError, KdbenchError
from kdbench.store import Store
from kdbench.sweep import SweepEvents, study_progress
from kdbench.workers import STOP_GRACE_S, WorkerError, run_workers, watch

__all__ = ["LAUNCHERS", "Launcher", "WorkerCommand", "launch_workers"]

STOPPED = (130, 143)  # a worker's exit status after SIGINT / SIGTERM: its visit was recorded as interrupted


@dataclass
class WorkerCommand:
    """One worker, as a picklable callable a submitit job or a Ray task runs: ``kdbench sweep`` with ``args`` in a
    child process. SIGTERM (SLURM's scancel or preemption), SIGINT and submitit's USR2 reach the child as SIGTERM,
    which records its visit as interrupted; after USR2, submitit then requeues the job (:meth:`checkpoint`)."""

    args: list[str]
    storage_url: str
    optuna_proxy: str | None = None  # carried, not inherited: a Ray cluster started before the sweep has its own env
    requeues: int = field(default=0)

    def __call__(self) -> int:
        from kdbench.workers import die_with_parent

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KDBENCH_STORAGE": self.storage_url}
        if self.optuna_proxy:
            env["KDBENCH_OPTUNA_PROXY"] = self.optuna_proxy
        proc = subprocess.Popen([sys.executable, "-m", "kdbench", "sweep", *self.args], env=env,
                                start_new_session=True, preexec_fn=die_with_parent)  # signals reach it from here

        def stop(*_: Any) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

        def preempted(signum: int, frame: Any) -> None:  # submitit's USR2: stop the worker, then let it requeue
            stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE_S)
            if callable(before_usr):
                before_usr(signum, frame)

        before_usr: Any = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
            before_usr = signal.signal(signal.SIGUSR2, preempted)
        try:
            while True:  # in short waits: Ray's cancel raises KeyboardInterrupt without a signal, which a blocking
                with contextlib.suppress(subprocess.TimeoutExpired):  # wait would never let in
                    return proc.wait(timeout=0.5)
        except BaseException:  # a Ctrl-C, or a Ray cancel: the worker records its visit first
            stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE_S)
            raise

    def checkpoint(self) -> Any:
        """submitit's requeue: the same worker again (it resumes from the store)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(replace(self, requeues=self.requeues + 1))


@dataclass
class _Running:
    """Started workers: their exit statuses so far (None: running), how to stop them, and what they are."""

    poll: Callable[[], list[int | None]]
    stop: Callable[[], None]
    what: str
    close: Callable[[], None] = lambda: None


def _submitit(command: WorkerCommand, workers: int, cfg: LauncherConfig, folder: Path, cluster: str | None) -> _Running:
    import submitit
    from submitit.core.utils import UncompletedJobError

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    try:
        executor.update_parameters(
            name="kdbench", timeout_min=cfg.time_min, gpus_per_node=cfg.gpus_per_worker,
            cpus_per_task=cfg.cpus_per_worker, slurm_array_parallelism=workers,
            **({"slurm_partition": cfg.partition} if cfg.partition else {}),
            **({"slurm_additional_parameters": dict(cfg.sbatch)} if cfg.sbatch else {}))
    except (NameError, AssertionError, ValueError) as exc:  # submitit's refusals of a parameter
        raise ConfigError(f"launcher: submitit refused the options ({str(exc).splitlines()[0]}); see "
                          "docs/cluster.md") from None
    jobs = executor.submit_array([replace(command) for _ in range(workers)])

    def poll() -> list[int | None]:
        out: list[int | None] = []
        for job in jobs:
            if not job.done():
                out.append(None)
                continue
            try:
                out.append(int(job.result()))
            except UncompletedJobError:  # cancelled or preempted without a requeue: its worker was stopped
                out.append(143)
            except Exception:  # submitit: the failed job carries the worker's error (in its logs)
                out.append(1)
        return out

    def stop() -> None:
        for job in jobs:
            with contextlib.suppress(Exception):
                job.cancel()

    return _Running(poll, stop, f"{workers} submitit {executor.cluster} tasks (job {jobs[0].job_id.split('_')[0]}; "
                                f"logs in {folder})")


def _slurm(command: WorkerCommand, workers: int, cfg: LauncherConfig, folder: Path) -> _Running:
    return _submitit(command, workers, cfg, folder, cluster=None)  # SLURM where sbatch is, else local processes


def _run_command(command: WorkerCommand) -> int:  # what each Ray task runs
    return command()


def _ray_answers(cfg: LauncherConfig) -> None:
    """Refuse a ``launcher.ray_address`` where nothing accepts a connection, at once and before the teacher trains
    (``ray.init`` retries such an address for many minutes)."""
    address = cfg.ray_address
    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_S).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"launcher.ray_address: nothing answers at {address!r} ({exc or type(exc).__name__}); "
                          "give the head node's host:port (`ray start --head` prints it), or leave it unset for "
                          "a cluster on this machine") from None


def _ray(command: WorkerCommand, workers: int, cfg: LauncherConfig, _folder: Path) -> _Running:
    import ray

    started = not ray.is_initialized()
    if started:  # no address: a new cluster on this machine for this sweep ("local": never one already running here)
        try:
            ray.init(address=cfg.ray_address or "local", include_dashboard=False, log_to_driver=True,
                     num_cpus=None if cfg.ray_address else workers * cfg.cpus_per_worker)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            if cfg.ray_address is None:
                raise ConfigError(f"launcher: Ray could not start a cluster on this machine "
                                  f"({str(exc).splitlines()[0]}); give launcher.ray_address (--ray-address) of "
                                  "one started with `ray start --head`") from None
            raise ConfigError(f"launcher.ray_address: cannot join the Ray cluster at {cfg.ray_address!r} "
                              f"({str(exc).splitlines()[0]}); start one with `ray start --head`, or leave it "
                              "unset for one on this machine") from None
    task = ray.remote(num_gpus=cfg.gpus_per_worker, num_cpus=cfg.cpus_per_worker, max_retries=0)(_run_command)
    refs = [task.remote(command) for _ in range(workers)]

    def poll() -> list[int | None]:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out: list[int | None] = []
        for ref in refs:
            if ref not in done:
                out.append(None)
                continue
            try:
                out.append(int(ray.get(ref)))
            except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError) as exc:
                out.append(130 if isinstance(exc, ray.exceptions.TaskCancelledError) else 1)
        return out

    def stop() -> None:
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)  # KeyboardInterrupt in the task: its worker gets SIGTERM and records its visit
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_S)

    return _Running(poll, stop, f"{workers} Ray tasks on {ray.get_runtime_context().gcs_address}",
                    close=ray.shutdown if started else (lambda: None))


@dataclass(frozen=True)
class Launcher:
    """One way of starting workers: the package it needs, the extra that installs it, and what starts them
    (None: :func:`kdbench.workers.run_workers`, processes on this machine)."""

    name: str
    module: str | None
    start: Callable[[WorkerCommand, int, LauncherConfig, Path], _Running] | None
    doc: str
    check: Callable[[LauncherConfig], None] = lambda _cfg: None  # refuses options before anything is prepared


LAUNCHERS: dict[str, Launcher] = {x.name: x for x in (
    Launcher("local", None, None, "processes on this machine"),
    Launcher("slurm", "submitit", _slurm, "one SLURM job-array task per worker, through submitit"),
    Launcher("ray", "ray", _ray, "one Ray task per worker", _ray_answers),
)}


def worker_args(name: str, *, device: str, threads: int, overrides: Sequence[str] = (),
                cache_dir: str | Path | None = None, max_visits: int | None = None) -> list[str]:
    """The ``kdbench sweep`` arguments of one worker joining study ``name`` (``--storage``: by environment)."""
    return ["--join", name, "--quiet", "--as-worker", "--device", device, "--threads", str(threads),
            *(f"--set={o}" for o in overrides), *(["--cache-dir", str(Path(cache_dir).resolve())] if cache_dir else []),
            *(["--max-visits", str(max_visits)] if max_visits else [])]


def launch_workers(study: Study, *, workers: int, store: Store, storage_url: str, device: str, here: Any,
                   events: SweepEvents, overrides: tuple[str, ...] = (), threads: int | None = None,
                   cache_dir: str | Path | None = None, max_visits: int | None = None, replace: bool = False,
                   study_file: str | Path | None = None) -> None:
    """Prepare ``study`` here, then run it on ``workers`` workers started by ``study.launcher.name``.

    Args:
        study: the validated study; its ``launcher`` section says who starts the workers.
        study_file: the file ``study`` was read from; None: it came from the store (``--join``), checked already.
            Local workers of a study file read the file (:func:`kdbench.workers.sweep_workers`), the others join.
        threads: torch threads per worker (default: the launcher's ``cpus_per_worker``; local: cores // workers).
        other arguments: as :func:`kdbench.workers.sweep_workers`'s.

    Raises:
        ConfigError: the launcher's package is not installed (the message names the extra), or its options were
            refused.
        WorkerError: a worker ended with an error.
        KeyboardInterrupt: after Ctrl-C, once every worker has been stopped.
    """
    from kdbench.join import join_study
    from kdbench.sweep import prepare_sweep
    from kdbench.teacher import open_cache_dir
    from kdbench.workers import sweep_workers, worker_threads

    cfg = study.launcher
    if cfg.name == "local" and study_file is not None:
        sweep_workers(study, study_file, overrides, workers=workers, store=store, storage_url=storage_url,
                      device=device, here=here, events=events, threads=threads, cache_dir=cache_dir,
                      max_visits=max_visits, replace=replace)
        return
    launcher = LAUNCHERS[cfg.name]
    if launcher.module is not None and importlib.util.find_spec(launcher.module) is None:
        raise ConfigError(f"launcher: {cfg.name} needs {launcher.module}, which is not installed; "
                          "pip install 'kdbench[cluster]'")
    launcher.check(cfg)

    def prepare() -> None:
        prepare_sweep(study, storage=store, device=here, cache_dir=cache_dir, events=events, replace=replace)
        if study_file is None:
            return
        try:  # each worker joins from this folder: one that would be refused (a model's code not found) is said now
            join_study(store, study.name, overrides)
        except KdbenchError as exc:
            raise ConfigError(f"launcher: a worker started from {Path.cwd()} could not join the study: {exc}; run "
                              "from the folder the study's model paths start from") from None

    n_threads = threads or (worker_threads(workers) if launcher.start is None else cfg.cpus_per_worker)
    args = worker_args(study.name, device=device, threads=n_threads, overrides=overrides, cache_dir=cache_dir,
                       max_visits=max_visits)
    if launcher.start is None:
        run_workers(study, args, workers=workers, store=store, events=events, prepare=prepare, storage_url=storage_url)
        return
    prepare()
    folder = Path(cfg.logs) if cfg.logs else open_cache_dir(cache_dir) / "submitit" / study.name
    running = launcher.start(WorkerCommand(args, storage_url, store.optuna_proxy), workers, cfg, folder)
    try:
        _watch(running, study, store, events, workers)
    finally:
        running.close()


def _watch(running: _Running, study: Study, store: Store, events: SweepEvents, workers: int) -> None:
    events.on_status(running.what)
    try:
        watch(lambda: None in running.poll(), store, study, events, tick_s=1.0)
    except KeyboardInterrupt:
        events.on_status("stopping the workers (each records its trial as interrupted)")
        running.stop()
        raise
    events.on_progress(study_progress(store, study))
    codes = running.poll()
    for i, rc in enumerate(codes):
        if rc in STOPPED:
            events.on_log(f"worker {i + 1} of {workers} was stopped (status {rc}): its visit, if any, was recorded "
                          "as interrupted; a re-run resumes it")
    failed = [(i, rc) for i, rc in enumerate(codes) if rc not in (0, *STOPPED)]
    if failed:
        i, rc = failed[0]
        raise WorkerError(f"worker {i + 1} of {workers} exited with status {rc}; see {running.what}")


def with_launcher(study: Study, **flags: Any) -> Study:
    """``study`` with its ``launcher:`` section overridden by the flags given (None: not given); ``sbatch`` is a
    sequence of ``KEY=VALUE`` added to the section's.

    Raises:
        ConfigError: a ``--sbatch`` option that is not KEY=VALUE, or a value the section refuses.
    """
    given = {k: v for k, v in flags.items() if v not in (None, ())}
    if "sbatch" in given:
        bad = [o for o in given["sbatch"] if "=" not in o.strip("=")]
        if bad:
            raise ConfigError(f"--sbatch {bad[0]}: give an sbatch option as KEY=VALUE, e.g. --sbatch account=lab")
        given["sbatch"] = {**study.launcher.sbatch, **dict(o.lstrip("-").split("=", 1) for o in given["sbatch"])}
    if not given:
        return study
    from pydantic import ValidationError

    try:
        cfg = LauncherConfig.model_validate({**study.launcher.model_dump(), **given})
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigError(f"launcher.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})") from None
    return study.model_copy(update={"launcher": cfg})
