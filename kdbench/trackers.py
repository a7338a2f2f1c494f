"""Experiment trackers: every run of a sweep, and a report's files, copied to MLflow and TensorBoard as well.

``log: [mlflow, tensorboard]`` in the study file (or ``--log`` on ``kdbench sweep`` and ``kdbench report``). The
store stays the one record of results; a tracker gets a copy, written once a run's row is final, from what was
written there (:class:`RunRecord`): its parameters, tags (study, stage, seed, config hash, ...), its per-epoch
curve as a step series (step = the store's 0-based epoch; with ``student.eval_every``, the point's number) and
its final metrics under the store's column names.
The training loop knows nothing of trackers: the sweep calls :meth:`Trackers.log_run` when an attempt ends
(:mod:`kdbench.sweep.attempt`).

Where things go:

- MLflow: ``$MLFLOW_TRACKING_URI`` when set (or ``mlflow.set_tracking_uri`` in this process), else the SQLite file
  ``<cache>/mlflow.db`` with artifacts under ``<cache>/mlartifacts/<study>/`` (MLflow 3 keeps its ``./mlruns``
  file store in maintenance mode and refuses to open one unless told to; the cache, not the results database's
  folder, because that database may be PostgreSQL on another machine). One experiment per study (its name), one
  MLflow run per kdbench run, and one per ``kdbench report`` holding the report's files as artifacts.
- TensorBoard: ``<cache>/tensorboard/<study>/<run id>/`` (run id: the store's), one event file per run, with its
  scalars, its hyperparameters (the HPARAMS tab) and a text summary; a report's figures under ``.../report/``.

A tracker that fails (a locked file, a server that went away) is warned about once, with the error, and switched
off for the rest of this process: the sweep goes on and loses nothing, for the store holds every result.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kdbench.errors import ConfigError, OutputError, first_line
from kdbench.store.claims import EpochLike

__all__ = ["FINAL_METRICS", "TRACKERS", "RunRecord", "Trackers", "check_trackers", "log_report", "mlflow_uri",
           "parse_log_option"]

log = logging.getLogger(__name__)

TRACKERS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}  # tracker -> the package it needs (= kdbench's extra)
EPOCH_SERIES = ("val_acc", "val_loss", "train_loss", "lr")  # per-epoch columns logged as step series ("epoch/...")
FINAL_METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "wall_time_s", "samples_per_s", "infer_ms_per_batch")
_MLFLOW_STATUS = {"complete": "FINISHED", "failed": "FAILED", "pruned": "KILLED", "interrupted": "KILLED"}
_BATCH = 1000  # MLflow's limit of entities (metrics + params + tags) per log_batch call


def check_trackers(names: Iterable[str]) -> None:
    """Import each tracker's package, so that a missing one stops a sweep before anything is trained; MLflow's
    info lines ("Creating initial MLflow database tables") stay out of the output unless logging is at INFO.

    Raises:
        ConfigError: one line naming the tracker and the extra to install.
    """
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"log: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        try:
            importlib.import_module(TRACKERS[name])
        except ImportError:
            raise ConfigError(f"log: {name} needs the {TRACKERS[name]} package; pip install 'kdbench[{name}]'"
                              ) from None
        if name == "mlflow" and not logging.getLogger().isEnabledFor(logging.INFO):
            logging.getLogger("mlflow").setLevel(logging.WARNING)


def parse_log_option(values: Iterable[str]) -> list[str]:
    """``--log mlflow,tensorboard`` or ``--log mlflow --log tensorboard`` as a list of trackers, in order, once each.

    Raises:
        ConfigError: an unknown tracker (the line names the option and the choices).
    """
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    for name in out:
        if name not in TRACKERS:
            raise ConfigError(f"--log {name!r}: unknown tracker; choose from {', '.join(TRACKERS)} "
                              "(comma-separated or repeated)")
    return list(dict.fromkeys(out))


def mlflow_uri(cache_dir: str | Path) -> str:
    """The MLflow tracking URI runs are logged to: ``$MLFLOW_TRACKING_URI`` (or one set with
    ``mlflow.set_tracking_uri``), else ``sqlite:///<cache>/mlflow.db``."""
    import mlflow

    if mlflow.is_tracking_uri_set():
        return str(mlflow.get_tracking_uri())
    return f"sqlite:///{(Path(cache_dir) / 'mlflow.db').resolve()}"


@dataclass(frozen=True)
class RunRecord:
    """What a tracker is given of one run, once its row is final: what the store holds of it.

    Attributes:
        params: its hyperparameters and recipe (method, temperature, alpha, lr, seed, epochs or steps, ...).
        tags: ``kdbench.*`` tags: study, stage, seed, config hash, run id, visit, state, device, commit, ...
        epochs: its curve, one record per epoch.
        metrics: its final metrics under the store's column names (None: not stored).
        started, finished: Unix times in seconds.
    """

    study: str
    run_id: int
    visit: str
    state: str
    params: dict[str, Any]
    tags: dict[str, str]
    epochs: Sequence[EpochLike]
    metrics: dict[str, float | None]
    started: float
    finished: float

    def series(self) -> Iterable[tuple[str, int, float, float]]:
        """``(name, epoch, value, unix time)`` of each finite per-epoch value (as the store keeps them)."""
        t = self.started
        for rec in self.epochs:
            t += rec.seconds
            for key in EPOCH_SERIES:
                value = getattr(rec, key)
                if value is not None and math.isfinite(value):
                    yield f"epoch/{key}", rec.point, float(value), t

    def finals(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items() if v is not None and math.isfinite(v)}


class _Tracker(Protocol):
    name: str

    def log_run(self, run: RunRecord) -> None: ...
    def log_report(self, study: str, out: Path, files: Sequence[Path], tags: dict[str, str]) -> None: ...


class _MLflow:
    """One experiment per study (named after it), one MLflow run per kdbench run."""

    name = "mlflow"

    def __init__(self, study: str, cache_dir: Path) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        default_store = not mlflow.is_tracking_uri_set()  # then the artifacts go to the cache, beside mlflow.db
        self.client = MlflowClient(mlflow_uri(cache_dir))
        artifacts = (cache_dir / "mlartifacts" / study).resolve().as_uri() if default_store else None
        self.experiment_id = self._experiment(study, artifacts)  # now: before workers race to it; a bad URI shows

    def _experiment(self, study: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(study)
        if found is None:
            try:
                return str(self.client.create_experiment(study, artifact_location=artifacts,
                                                         tags={"kdbench.study": study}))
            except MlflowException:  # another worker created it first
                found = self.client.get_experiment_by_name(study)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":  # deleted in the UI: runs cannot be added to it until restored
            self.client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)

    def log_run(self, run: RunRecord) -> None:
        from mlflow.entities import Metric, Param

        rid = self.client.create_run(self.experiment_id, start_time=_ms(run.started), tags=run.tags,
                                     run_name=run.visit).info.run_id
        params = [Param(k, str(v)) for k, v in run.params.items()]
        metrics = [Metric(name, value, _ms(t), step) for name, step, value, t in run.series()]
        metrics += [Metric(k, v, _ms(run.finished), 0) for k, v in run.finals().items()]
        with self._failed_on_error(rid):
            for i in range(0, len(params), 100):  # MLflow takes up to 100 params per call
                self.client.log_batch(rid, params=params[i:i + 100])
            for i in range(0, len(metrics), _BATCH):
                self.client.log_batch(rid, metrics=metrics[i:i + _BATCH])
        self.client.set_terminated(rid, _MLFLOW_STATUS.get(run.state, "FINISHED"), end_time=_ms(run.finished))

    @contextlib.contextmanager
    def _failed_on_error(self, rid: str) -> Iterator[None]:
        """A run half logged is marked FAILED (where the store still answers), not left RUNNING."""
        try:
            yield
        except Exception:
            with contextlib.suppress(Exception):
                self.client.set_terminated(rid, "FAILED")
            raise

    def log_report(self, study: str, out: Path, files: Sequence[Path], tags: dict[str, str]) -> None:
        rid = self.client.create_run(self.experiment_id, tags=tags, run_name="report").info.run_id
        with self._failed_on_error(rid):
            self.client.log_artifacts(rid, str(out))
        self.client.set_terminated(rid, "FINISHED")


class _TensorBoard:
    """One event-file folder per run: ``<cache>/tensorboard/<study>/<run id>/``."""

    name = "tensorboard"

    def __init__(self, study: str, cache_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: fails here when it is missing

        self.writer_class = SummaryWriter
        self.root = cache_dir / "tensorboard"

    def folder(self, study: str, name: str) -> Path:
        folder = self.root / study / name
        if folder.exists():  # a run id of a study since dropped (--replace): its curve is not this run's
            shutil.rmtree(folder)
        return folder

    def log_run(self, run: RunRecord) -> None:
        from torch.utils.tensorboard.summary import hparams

        with self.writer_class(log_dir=str(self.folder(run.study, str(run.run_id)))) as w:
            for name, step, value, t in run.series():
                w.add_scalar(name, value, step, walltime=t)
            finals = {f"final/{k}": v for k, v in run.finals().items()}
            for name, value in finals.items():
                w.add_scalar(name, value, len(run.epochs), walltime=run.finished)
            text = "\n".join(f"| {k} | {v} |" for k, v in {**run.tags, **run.params}.items())
            w.add_text("run", "| key | value |\n|---|---|\n" + text, walltime=run.finished)
            hp = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in run.params.items()}
            hp["stage"] = run.tags.get("kdbench.stage", "")
            for summary in hparams(hp, finals):  # the HPARAMS tab: experiment, session start and end
                w.file_writer.add_summary(summary, walltime=run.finished)

    def log_report(self, study: str, out: Path, files: Sequence[Path], tags: dict[str, str]) -> None:
        import matplotlib.image

        with self.writer_class(log_dir=str(self.folder(study, "report"))) as w:
            for f in files:
                if f.suffix == ".png":
                    w.add_image(f"report/{f.stem}", matplotlib.image.imread(f)[..., :3], dataformats="HWC")


_OPEN: dict[str, Callable[[str, Path], _Tracker]] = {"mlflow": _MLflow, "tensorboard": _TensorBoard}


@dataclass
class Trackers:
    """The trackers one process logs a study's runs to. Each call is guarded: a tracker that fails is warned
    about once (``on_warning``, with the error) and switched off for the rest of this process.

    Create with :meth:`open`; with no trackers every call does nothing.
    """

    study: str
    trackers: list[_Tracker] = field(default_factory=list)
    on_warning: Callable[[str], None] = log.warning

    @classmethod
    def open(cls, names: Sequence[str], study: str, cache_dir: str | Path,
             on_warning: Callable[[str], None] = log.warning) -> Trackers:
        """Open each named tracker (MLflow: its store and the study's experiment).

        Raises:
            ConfigError: a tracker's package is missing (the line names the extra to install).
            OutputError: a tracker cannot be opened (a bad ``$MLFLOW_TRACKING_URI``, a folder not writable).
        """
        check_trackers(names)
        opened: list[_Tracker] = []
        for name in names:
            try:
                opened.append(_OPEN[name](study, Path(cache_dir)))
            except Exception as exc:
                where = f" ({_shown(mlflow_uri(cache_dir))})" if name == "mlflow" else ""
                raise OutputError(f"log: {name}{where}: cannot open it: {first_line(exc)}; fix it, or drop {name} "
                                  "from log") from None
        return cls(study, opened, on_warning)

    def log_run(self, run: RunRecord) -> None:
        """Copy one finished run to every tracker still on."""
        self._each(f"run {run.run_id} ({run.visit})", lambda t: t.log_run(run))

    def log_report(self, out: Path, files: Sequence[Path], tags: dict[str, str]) -> None:
        """Copy a report's files (``out``, the folder holding ``files``) to every tracker still on."""
        self._each("the report", lambda t: t.log_report(self.study, out, files, tags))

    def _each(self, what: str, call: Callable[[_Tracker], None]) -> None:
        for t in list(self.trackers):
            try:
                call(t)
            except Exception as exc:
                self.trackers.remove(t)
                self.on_warning(f"{self.study}: log: {t.name} failed on {what} ({type(exc).__name__}: "
                                f"{first_line(exc)}); logging to {t.name} is off for the rest of this process, "
                                "the results are in the store as always")


def log_report(report: Any, names: Sequence[str], cache_dir: str | Path, storage_url: str,
               on_warning: Callable[[str], None] = log.warning) -> None:
    """Log a written report (:class:`kdbench.report.render.Report`) to each tracker, once per study it covers:
    MLflow: one run named ``report`` in the study's experiment, every file of the report as its artifacts;
    TensorBoard: its figures as images.

    Raises:
        ConfigError, OutputError: as :meth:`Trackers.open`.
    """
    if report.out is None:
        return
    covered = ",".join(sf.name for sf in report.frames)
    for sf in report.frames:
        tags = {"kdbench.study": sf.name, "kdbench.stage": "report", "kdbench.config_hash": sf.config_hash,
                "kdbench.storage": storage_url, "kdbench.report_studies": covered}
        Trackers.open(names, sf.name, cache_dir, on_warning).log_report(Path(report.out), report.files, tags)


def _shown(uri: str) -> str:
    from kdbench.store import shown_url

    return shown_url(uri)


def _ms(t: float) -> int:
    return int(t * 1000)

