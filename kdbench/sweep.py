"""The sweep: a CE baseline and an Optuna study over T × alpha (+ lr), then multi-seed finalists.

Plan → claim → run. The plan is the list of visits a study needs (each (T, alpha) grid point
``trials_per_point`` times, the CE baseline's lr trials, then the finalists' seeds). Workers claim
visits in the store under a unique constraint, so any number of ``kdbench sweep`` processes, on one
machine or many sharing a database, split the work without running a visit twice. A visit whose
worker died (a dead PID on this host, or a stale heartbeat) or was interrupted is claimed again: the old
attempt stays in the store as ``<visit>#<attempt>`` (failed with the reason, or interrupted) and its
Optuna trial is failed with a ``fail_reason`` user attribute. Completed, pruned and failed (non-finite
loss) visits are final. A run's results and epochs are written in one transaction when it ends.
Every search visit is one Optuna trial (KD trials in the study ``<name>``, CE trials
in ``<name>.ce``): T and alpha are fixed by the visit through ``PartialFixedSampler`` while the
sampler draws lr, so Optuna's own tools see the study as it is. Selection uses validation accuracy;
the test set is only evaluated for finalists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import sqlalchemy as sa
import torch
from sqlalchemy.exc import IntegrityError

from kdbench.config import Range, Study, is_geometric
from kdbench.data import Data, DatasetInfo, load_data
from kdbench.errors import CheckpointError, ConfigError, NonFiniteLossError, StoreError
from kdbench.models import build_model, count_parameters
from kdbench.provenance import device_name, kdbench_commit, library_versions
from kdbench.store import EpochRow, RunRow, Store, StudyRow, TeacherRow, _now, retry_schema_race, worker_id
from kdbench.teacher import Teacher, open_cache_dir, prepare_teacher
from kdbench.train import EpochRecord, KDParams, TrainResult, inference_ms_per_batch, predict_logits, train

__all__ = [
    "STALE_AFTER_S",
    "Claimed",
    "Progress",
    "SweepEvents",
    "Visit",
    "ce_trials",
    "check_models",
    "check_study",
    "claim",
    "finalist_summary",
    "plan_finalists",
    "plan_search",
    "prepare_sweep",
    "register_study",
    "run_sweep",
    "study_progress",
]

log = logging.getLogger(__name__)
STALE_AFTER_S = 120.0  # seconds without a heartbeat after which another worker takes a running visit over
HEARTBEAT_S = 15.0  # seconds between heartbeats of a running visit
POLL_S = 2.0  # seconds between looks at the store while waiting for other workers
TERMINAL = ("complete", "pruned", "failed")


@dataclass(frozen=True)
class Visit:
    """One planned training run. ``None`` parameters are drawn by the sampler."""

    key: str
    kind: str  # kd | ce | finalist
    loss: str  # kd | ce
    seed: int
    temperature: float | None = None
    alpha: float | None = None
    lr: float | None = None
    rank: int | None = None


def ce_trials(study: Study) -> int:
    """CE baseline trials: ``baseline.trials``, default max(3, trials_per_point): at least a grid point's."""
    if study.baseline.trials is not None:
        return study.baseline.trials
    return max(3, study.search.trials_per_point)


def _grid(v: list[float] | Range) -> list[float] | None:
    return v if isinstance(v, list) else None


def plan_search(study: Study) -> list[Visit]:
    """The KD and CE search visits, in a fixed order (CE first: it is the yardstick)."""
    s = study.search
    visits: list[Visit] = []
    lrs = _grid(s.lr) if s.sampler == "grid" else None
    lr_points: list[float | None] = list(lrs) if lrs else [None]
    if study.baseline.ce:
        n_ce = ce_trials(study)
        for lr in lr_points:
            for r in range(n_ce if lrs is None else s.trials_per_point):
                key = f"ce/lr={lr:g}/r={r}" if lr is not None else f"ce/r={r}"
                visits.append(Visit(key, "ce", "ce", study.seed, lr=lr))
    temps, alphas = _grid(s.temperature), _grid(s.alpha)
    if temps is not None and alphas is not None:
        for t in temps:
            for a in alphas:
                for lr in lr_points:
                    for r in range(s.trials_per_point):
                        key = f"kd/T={t:g}/a={a:g}" + (f"/lr={lr:g}" if lr is not None else "") + f"/r={r}"
                        visits.append(Visit(key, "kd", "kd", study.seed, temperature=t, alpha=a, lr=lr))
    else:
        n = s.trials or 20 * s.trials_per_point
        for r in range(n):
            visits.append(Visit(f"kd/r={r}", "kd", "kd", study.seed,
                                temperature=temps[r % len(temps)] if temps and len(temps) == 1 else None,
                                alpha=alphas[0] if alphas and len(alphas) == 1 else None))
    return visits


def finalist_seeds(study: Study) -> list[int]:
    """Finalists run on fresh seeds (seed+1 ...), not the one the search selected on."""
    return [study.seed + 1 + i for i in range(study.finalists.seeds)]


def plan_finalists(study: Study, runs: pd.DataFrame) -> list[Visit]:
    """The top_k KD configurations and the best CE one (by validation accuracy), each on every seed."""
    visits: list[Visit] = []
    done = runs[(runs["state"] == "complete") & runs["kind"].isin(["kd", "ce"])]
    for loss, k in (("kd", study.finalists.top_k), ("ce", 1 if study.baseline.ce else 0)):
        best = done[done["kind"] == loss].sort_values(["val_acc", "trial_number"], ascending=[False, True])
        for rank, (_, row) in enumerate(best.head(k).iterrows()):
            for seed in finalist_seeds(study):
                visits.append(Visit(
                    f"final/{loss}/rank={rank}/seed={seed}", "finalist", loss, seed,
                    temperature=None if loss == "ce" else float(row["temperature"]),
                    alpha=None if loss == "ce" else float(row["alpha"]), lr=float(row["lr"]), rank=rank))
    return visits


def planned_total(study: Study) -> int:
    """How many visits the whole study has (search plus finalists)."""
    n_final = (study.finalists.top_k + (1 if study.baseline.ce else 0)) * study.finalists.seeds
    return len(plan_search(study)) + n_final


# ---------------------------------------------------------------------------------------------- store


def check_study(store: Store, study: Study) -> StudyRow | None:
    """The stored row of ``study`` (None if new), after checking it was made from the same config.

    Raises:
        StoreError: the name is taken by a study with another config hash.
    """
    row = store.study(study.name)
    if row is not None and row.config_hash != study.hash:
        raise StoreError(
            f"study {study.name!r} in {store.url} was created from another config (hash {row.config_hash}, "
            f"this one is {study.hash}); start a new study with --set name={study.name}-2, "
            f"or drop the old one with --replace"
        )
    return row


def register_study(store: Store, study: Study) -> StudyRow:
    """Create the study's row, or check that the stored one has the same config hash."""
    row = check_study(store, study)
    if row is None:
        try:
            with store.session() as s:
                s.add(StudyRow(name=study.name, config=study.model_dump_json(), config_hash=study.hash,
                               commit=kdbench_commit()))
        except IntegrityError:
            pass
        row = check_study(store, study)  # ours, or one another worker registered first
        assert row is not None
    return row


def check_models(study: Study, info: DatasetInfo) -> None:
    """Build the teacher (with ``teacher.checkpoint``) and the student once, so that an unknown model or
    a bad weights file is reported before anything is trained or stored.

    Raises:
        ConfigError: an unknown model name.
        CheckpointError: a weights file that is not a state dict of that model for this dataset.
    """
    t = study.teacher
    t_weights = ("checkpoint", t.checkpoint) if t.checkpoint else ("pretrained", t.pretrained)
    s_weights = ("pretrained", study.student.pretrained)
    for section, recipe, (weights_key, weights) in (("teacher", t, t_weights), ("student", study.student, s_weights)):
        try:
            build_model(recipe.model, in_channels=info.channels, num_classes=info.num_classes,
                        image_size=info.image_size, pretrained=weights)
        except ConfigError as exc:
            raise ConfigError(f"{section}.model: {exc}") from None
        except CheckpointError as exc:
            raise CheckpointError(f"{section}.{weights_key}: {exc}") from None


def drop_study(store: Store, name: str, optuna_storage: optuna.storages.BaseStorage) -> None:
    """Delete a study's kdbench rows and its two Optuna studies."""
    with store.session() as s:
        row = s.scalar(sa.select(StudyRow).where(StudyRow.name == name))
        if row is not None:
            ids = sa.select(RunRow.id).where(RunRow.study_id == row.id)
            s.execute(sa.delete(EpochRow).where(EpochRow.run_id.in_(ids)))
            s.execute(sa.delete(RunRow).where(RunRow.study_id == row.id))
            s.delete(row)
    for oname in (name, f"{name}.ce"):
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=oname, storage=optuna_storage)


def _pid_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host; None when it lives on another host."""
    if not owner or ":" not in owner:
        return None
    host, _, pid = owner.rpartition(":")
    if host != worker_id().rpartition(":")[0] or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _takeover_reason(run: RunRow, stale_after_s: float) -> str | None:
    """Why another worker may take ``run``'s visit over, or None while its worker lives."""
    if run.state == "interrupted":
        return run.error or "interrupted"
    if run.state != "running":
        return None
    if run.owner == worker_id():  # this process claims one visit at a time: this one is a leftover
        return f"an earlier sweep in this process ({run.owner}) stopped without recording it"
    if _pid_alive(run.owner) is False:
        return f"worker {run.owner} died (its process is gone) at epoch {run.epochs_done}"
    age = math.inf if run.heartbeat is None else (_now() - run.heartbeat).total_seconds()
    if age > stale_after_s:
        return f"worker {run.owner} stopped: no heartbeat for {age:.0f} s (limit {stale_after_s:g} s)"
    return None


@dataclass(frozen=True)
class Claimed:
    """A visit this worker now owns: its new run row, and the attempt it replaced (if any)."""

    run_id: int
    visit: Visit
    index: int
    replaced_trial: int | None = None  # Optuna trial id of a dead attempt, to be marked failed
    replaced_reason: str | None = None


def claim(store: Store, study_id: int, visit: Visit, index: int, config_hash: str,
          stale_after_s: float) -> Claimed | None:
    """Claim ``visit`` for this worker, in one transaction.

    A visit nobody ran gets a new row. A visit whose worker died (dead PID on this host, or no heartbeat
    for ``stale_after_s``) or was interrupted keeps its row as a retired attempt (visit ``key#attempt``,
    state ``failed`` with the reason, or ``interrupted``) and gets a new row. The unique (study, visit)
    constraint and a conditional update make sure only one worker wins.

    Returns:
        The claim, or None if the visit is final or a live worker holds it.
    """
    fields = dict(kind=visit.kind, loss=visit.loss, seed=visit.seed, temperature=visit.temperature,
                  alpha=visit.alpha, lr=visit.lr, rank=visit.rank, config_hash=config_hash)

    def new_row(attempt: int) -> RunRow:
        return RunRow(study_id=study_id, visit=visit.key, state="running", owner=worker_id(), heartbeat=_now(),
                      started=_now(), attempt=attempt, **fields)

    try:
        with store.session() as s:
            run = s.scalar(sa.select(RunRow).where(RunRow.study_id == study_id, RunRow.visit == visit.key))
            if run is None:
                row = new_row(1)
                s.add(row)
                s.flush()
                return Claimed(row.id, visit, index)
            reason = _takeover_reason(run, stale_after_s)
            if reason is None:
                return None
            retired = s.execute(  # type: ignore[attr-defined]
                sa.update(RunRow)
                .where(RunRow.id == run.id, RunRow.visit == visit.key, RunRow.attempt == run.attempt,
                       RunRow.state == run.state)
                .values(visit=f"{visit.key}#{run.attempt}", error=reason, finished=run.finished or _now(),
                        state="interrupted" if run.state == "interrupted" else "failed")
                .execution_options(synchronize_session=False)
            ).rowcount
            if retired != 1:
                return None
            row = new_row(run.attempt + 1)
            s.add(row)
            s.flush()
            dead = run.trial_id if run.state == "running" else None
            return Claimed(row.id, visit, index, dead, reason)
    except IntegrityError:
        return None


class _Heartbeat:
    """Refreshes a running visit's heartbeat from a background thread."""

    def __init__(self, store: Store, run_id: int) -> None:
        self._stop = threading.Event()
        self._store, self._run_id = store, run_id
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self._store.session() as s:
                    s.execute(sa.update(RunRow).where(RunRow.id == self._run_id).values(heartbeat=_now()))
            except Exception:  # a missed heartbeat is not fatal; the next one retries
                log.debug("heartbeat failed", exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Progress:
    """Where the whole study stands, over every worker's runs (for progress displays)."""

    done: int  # planned visits that are final (complete, pruned or failed)
    total: int  # planned visits, search and finalists
    counts: dict[str, int]  # runs by state, retired attempts included
    best: dict[str, float]  # best validation accuracy so far, by kind (kd, ce)
    running: list[tuple[str, int]]  # (visit, epochs done) of the runs in progress


def study_progress(store: Store, study: Study) -> Progress:
    """Count the study's final visits and find its best validation accuracies so far."""
    runs = store.runs(study.name)
    planned = ~runs["visit"].str.contains("#", regex=False)
    ok = runs[(runs["state"] == "complete") & runs["kind"].isin(["kd", "ce"])]
    live = runs[runs["state"] == "running"]
    return Progress(
        done=int((planned & runs["state"].isin(TERMINAL)).sum()), total=planned_total(study),
        counts={str(k): int(v) for k, v in runs["state"].value_counts().items()},
        best={str(k): float(v) for k, v in ok.groupby("kind")["val_acc"].max().items()},
        running=[(str(v), int(e)) for v, e in zip(live["visit"], live["epochs_done"], strict=True)])


@dataclass
class SweepEvents:
    """Hooks for progress displays; every one is optional."""

    on_progress: Callable[[Progress], None] = lambda p: None
    on_visit_start: Callable[[Visit, dict[str, float]], None] = lambda v, p: None
    on_epoch: Callable[[EpochRecord, int], None] = lambda r, total: None
    on_visit_end: Callable[[Visit, str, float | None, str | None], None] = lambda v, state, acc, note: None
    on_status: Callable[[str], None] = lambda msg: None
    on_log: Callable[[str], None] = lambda line: None  # a line from another process (worker output)


@dataclass
class _Context:
    study: Study
    store: Store
    study_id: int
    data: Data
    teacher: Teacher
    device: torch.device
    storage: optuna.storages.BaseStorage
    weights_dir: Path
    events: SweepEvents
    stale_after_s: float
    versions: str = field(default="")


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the same database (SQLite gets the same busy timeout as ours).

    Workers started at the same moment on a fresh database race to create Optuna's tables; the loser
    retries.
    """
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return retry_schema_race(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs))


def _sampler(study: Study, index: int) -> optuna.samplers.BaseSampler:
    seed = (study.seed * 1_000_003 + index) % (2**31)
    if study.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(study: Study) -> optuna.pruners.BasePruner:
    if study.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if study.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=study.student.epochs or 1)
    return optuna.pruners.NopPruner()


def _suggest(trial: optuna.Trial, name: str, space: list[float] | Range) -> float:
    if isinstance(space, Range):
        return trial.suggest_float(name, space.low, space.high, log=space.log)
    return trial.suggest_float(name, min(space), max(space), log=is_geometric(space))


def _ask(ctx: _Context, visit: Visit, index: int) -> tuple[optuna.Study, optuna.Trial, dict[str, float]]:
    name = ctx.study.name if visit.loss == "kd" else f"{ctx.study.name}.ce"
    ostudy = optuna.create_study(storage=ctx.storage, study_name=name, direction="maximize",
                                 load_if_exists=True, pruner=_pruner(ctx.study))
    fixed = {k: v for k, v in (("temperature", visit.temperature), ("alpha", visit.alpha), ("lr", visit.lr))
             if v is not None}
    with warnings.catch_warnings():  # PartialFixedSampler is marked experimental; its interface is all we use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ostudy.sampler = optuna.samplers.PartialFixedSampler(fixed, _sampler(ctx.study, index))
    trial = ostudy.ask()
    try:  # the worker id first: the trial must be traceable even if what follows is cut off
        trial.set_user_attr("worker", worker_id())
        s = ctx.study.search
        params: dict[str, float] = {}
        if visit.loss == "kd":
            params["temperature"] = _suggest(trial, "temperature", s.temperature)
            params["alpha"] = _suggest(trial, "alpha", s.alpha)
        if isinstance(s.lr, list) and s.sampler != "grid":
            params["lr"] = float(trial.suggest_categorical("lr", s.lr))
        else:
            params["lr"] = _suggest(trial, "lr", s.lr)
        trial.set_user_attr("visit", visit.key)
        trial.set_user_attr("config_hash", ctx.study.hash)
    except BaseException as exc:  # Ctrl-C right after the ask: no run will point to this trial
        _close_trial(ctx.storage, trial._trial_id, "interrupted", f"{type(exc).__name__} while asking Optuna")
        raise
    return ostudy, trial, params


_OPTUNA_STATE = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
    "interrupted": optuna.trial.TrialState.FAIL,
}


def _close_trial(storage: optuna.storages.BaseStorage, trial_id: int, state: str, reason: str | None = None,
                 value: float | None = None) -> None:
    """Finish an Optuna trial as kdbench recorded its run (a no-op if it is already finished)."""
    tstate = _OPTUNA_STATE[state]
    try:
        if storage.get_trial(trial_id).state.is_finished():
            return
        if reason and tstate == optuna.trial.TrialState.FAIL:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        values = [value] if tstate == optuna.trial.TrialState.COMPLETE and value is not None else None
        storage.set_trial_state_values(trial_id, tstate, values)
    except (KeyError, optuna.exceptions.UpdateFinishedTrialError):
        pass


def _update(ctx: _Context, run_id: int, **values: Any) -> None:
    with ctx.store.session() as s:
        s.execute(sa.update(RunRow).where(RunRow.id == run_id).values(**values))


def _finish(ctx: _Context, run_id: int, records: list[EpochRecord], **values: Any) -> None:
    """Write a run's final state, its results and its epochs in one transaction: never half a run."""
    with ctx.store.session() as s:
        s.execute(sa.update(RunRow).where(RunRow.id == run_id).values(epochs_done=len(records), **values))
        s.add_all(EpochRow(run_id=run_id, epoch=r.epoch, train_loss=_num(r.train_loss), val_acc=_num(r.val_acc),
                           val_loss=_num(r.val_loss), seconds=r.seconds, lr=r.lr) for r in records)


class _Attempt:
    """One claimed visit from its start (Optuna trial, fresh model) to its recorded end.

    :meth:`finish` records whatever stopped it (a result, pruning, a non-finite loss, Ctrl-C, a bug), so a
    claimed visit is never left running by a live worker.
    """

    def __init__(self, ctx: _Context, c: Claimed) -> None:
        self.ctx, self.c, self.visit = ctx, c, c.visit
        self.trial: optuna.Trial | None = None
        self.link: dict[str, Any] = {}  # the Optuna study and trial, once asked
        self.params: dict[str, float] = {}
        self.model: torch.nn.Module | None = None
        self.kd: KDParams | None = None
        self.records: list[EpochRecord] = []
        self.closed = False
        self.common: dict[str, Any] = dict(device=device_name(ctx.device), versions=ctx.versions,
                                           commit=kdbench_commit())

    def start(self) -> None:
        ctx, c, visit = self.ctx, self.c, self.visit
        if c.replaced_trial is not None:
            _close_trial(ctx.storage, c.replaced_trial, "failed", c.replaced_reason)
        if visit.kind in ("kd", "ce"):
            ostudy, self.trial, params = _ask(ctx, visit, c.index)
            self.link = dict(optuna_study=ostudy.study_name, trial_number=self.trial.number,
                             trial_id=self.trial._trial_id)
            _update(ctx, c.run_id, **self.link, temperature=params.get("temperature"), alpha=params.get("alpha"),
                    lr=params["lr"])
        else:
            params = {k: v for k, v in (("temperature", visit.temperature), ("alpha", visit.alpha),
                                        ("lr", visit.lr)) if v is not None}
        self.params = params
        ctx.events.on_visit_start(visit, params)
        torch.manual_seed(visit.seed)
        info, student = ctx.data.info, ctx.study.student
        self.model = build_model(student.model, in_channels=info.channels, num_classes=info.num_classes,
                                 image_size=info.image_size, pretrained=student.pretrained).to(ctx.device)
        self.common["parameters"] = count_parameters(self.model)
        self.kd = KDParams(params["temperature"], params["alpha"]) if visit.loss == "kd" else None

    def on_epoch(self, rec: EpochRecord) -> None:
        self.records.append(rec)
        _update(self.ctx, self.c.run_id, epochs_done=rec.epoch + 1, heartbeat=_now(), val_acc=_num(rec.val_acc))
        self.ctx.events.on_epoch(rec, self.ctx.study.student.epochs or 1)
        if self.trial is not None and math.isfinite(rec.val_acc):
            self.trial.report(rec.val_acc, rec.epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {rec.epoch} (val acc {rec.val_acc:.4f})")

    def close(self, state: str, reason: str | None, **values: Any) -> str:
        # the link again: a Ctrl-C between asking Optuna and the first write must not orphan the trial
        _finish(self.ctx, self.c.run_id, self.records, state=state, error=reason, finished=_now(), **self.common,
                **self.link, **values)
        self.closed = True
        if self.trial is not None:
            _close_trial(self.ctx.storage, self.trial._trial_id, state, reason, values.get("val_acc"))
        self.ctx.events.on_visit_end(self.visit, state, values.get("val_acc"), reason)
        return state

    def finish(self, outcome: TrainResult | BaseException) -> str:
        """Record the outcome; returns the final state (re-raises Ctrl-C and bugs once recorded)."""
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            assert self.model is not None
            extra = _finalist_outputs(self.ctx, self.visit, self.model) if self.visit.kind == "finalist" else {}
            return self.close("complete", None, val_acc=_num(outcome.val_acc), val_loss=_num(outcome.val_loss),
                              test_acc=outcome.test_acc, test_loss=outcome.test_loss,
                              wall_time_s=outcome.wall_time_s, samples_per_s=outcome.samples_per_s, **extra)
        except optuna.TrialPruned as exc:
            return self.close("pruned", str(exc))
        except NonFiniteLossError as exc:  # recorded as failed; the sweep goes on
            if self.trial is not None:
                self.trial.set_user_attr("fail_step", exc.step)
            return self.close("failed", str(exc))
        except BaseException as exc:  # Ctrl-C or a bug: the visit is re-run on resume
            if not self.closed:
                self.close("interrupted", f"{type(exc).__name__}: {exc}"[:500])
            raise


def _run_visit(ctx: _Context, c: Claimed) -> str:
    """Train one claimed visit and record it; returns its final state.

    Everything after the claim is covered: whatever stops it (Ctrl-C while asking Optuna, a bug), the run
    is recorded as interrupted rather than left running.
    """
    a = _Attempt(ctx, c)
    outcome: TrainResult | BaseException
    try:
        a.start()
        assert a.model is not None
        with _Heartbeat(ctx.store, c.run_id):
            outcome = train(a.model, ctx.data, ctx.study.student, lr=a.params["lr"], seed=c.visit.seed,
                            teacher=ctx.teacher.signal_for(ctx.data) if a.kd else None, kd=a.kd,
                            augment_kind=ctx.study.data.augment, callback=a.on_epoch,
                            evaluate_test=c.visit.kind == "finalist")
    except BaseException as exc:
        outcome = exc
    return a.finish(outcome)


def _run_fused(ctx: _Context, claimed: list[Claimed]) -> None:
    """Train search visits (one seed) together with :func:`kdbench.fused.train_fused`; pruning acts per visit."""
    from kdbench.fused import FusedStudent, train_fused

    attempts = [_Attempt(ctx, c) for c in claimed]
    outcomes: list[TrainResult | BaseException]
    try:
        for a in attempts:
            a.start()
        with contextlib.ExitStack() as beats:
            for a in attempts:
                beats.enter_context(_Heartbeat(ctx.store, a.c.run_id))
            outcomes = list(train_fused(
                [a.model for a in attempts if a.model is not None], ctx.data, ctx.study.student,
                [FusedStudent(a.params["lr"], a.kd, a.on_epoch) for a in attempts], seed=claimed[0].visit.seed,
                teacher=ctx.teacher.signal_for(ctx.data), augment_kind=ctx.study.data.augment))
    except BaseException as exc:
        outcomes = [exc] * len(attempts)
    raised: BaseException | None = None
    for a, res in zip(attempts, outcomes, strict=True):
        try:
            a.finish(res)
        except BaseException as exc:  # record every visit first, then stop as the sequential path would
            raised = raised or exc
    if raised is not None:
        raise raised


def _finalist_outputs(ctx: _Context, visit: Visit, model: torch.nn.Module) -> dict[str, Any]:
    """Keep a finalist's weights (written whole, then renamed) and its test predictions."""
    ctx.weights_dir.mkdir(parents=True, exist_ok=True)
    wpath = ctx.weights_dir / (visit.key.replace("/", "_").replace("=", "") + ".pt")
    tmp = wpath.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, wpath)
    info = ctx.data.info
    preds = predict_logits(model, ctx.data.test.images, info).argmax(1).to(torch.int16).cpu().numpy()
    return dict(weights_path=str(wpath), test_predictions=preds.tobytes(),
                infer_ms_per_batch=inference_ms_per_batch(model, info, ctx.device))


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _repair(ctx: _Context) -> None:
    """Bring Optuna's trials in line with kdbench's runs after a crash.

    A run recorded as final whose worker died before telling Optuna gets its state; an Optuna trial
    no run points to (its worker died between asking Optuna and recording the trial) is failed once its
    worker is gone.
    """
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(sa.select(RunRow.trial_id, RunRow.state, RunRow.val_acc, RunRow.error)
                            .where(RunRow.study_id == ctx.study_id, RunRow.trial_id.is_not(None))).all()
    linked = {r.trial_id for r in rows}
    for r in rows:
        if r.state != "running":
            _close_trial(ctx.storage, r.trial_id, r.state, r.error, r.val_acc)
    for name in (ctx.study.name, f"{ctx.study.name}.ce"):
        try:
            sid = ctx.storage.get_study_id_from_name(name)
        except KeyError:
            continue
        for t in ctx.storage.get_all_trials(sid, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t._trial_id in linked:
                continue
            alive = _pid_alive(t.user_attrs.get("worker"))
            age = (dt.datetime.now() - (t.datetime_start or dt.datetime.now())).total_seconds()
            if alive is False or (alive is None and age > ctx.stale_after_s):
                _close_trial(ctx.storage, t._trial_id, "failed",
                             f"orphaned: worker {t.user_attrs.get('worker')} stopped before kdbench recorded it")


def _record_teacher(store: Store, teacher: Teacher, data: Data, device: torch.device) -> None:
    if store.teacher(teacher.key) is not None:
        return
    preds = predict_logits(teacher.model, data.test.images, data.info).argmax(1).to(torch.int16).cpu().numpy()
    prov = teacher.meta.get("provenance", {})
    try:
        with store.session() as s:
            s.add(TeacherRow(
                key=teacher.key, model=teacher.meta["model"], dataset=data.info.name,
                parameters=teacher.parameters, val_acc=teacher.val_acc, test_acc=teacher.test_acc,
                train_seconds=teacher.train_seconds,
                infer_ms_per_batch=inference_ms_per_batch(teacher.model, data.info, device),
                cache_location=str(teacher.cache_dir.resolve()), device=prov.get("device", device_name(device)),
                versions=_json(prov.get("versions", library_versions())),
                commit=prov.get("commit", kdbench_commit()), test_predictions=preds.tobytes()))
    except IntegrityError:
        pass


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def _claim_loop(ctx: _Context, visits: list[Visit], offset: int, k: int = 1) -> Iterator[list[Claimed]]:
    """Yield up to ``k`` claimed visits at a time until every one of ``visits`` is final (waiting for others')."""
    while True:
        batch: list[Claimed] = []
        for i, v in enumerate(visits):
            c = claim(ctx.store, ctx.study_id, v, offset + i, ctx.study.hash, ctx.stale_after_s)
            if c is not None:
                batch.append(c)
                if len(batch) == k:
                    break
        if batch:
            yield batch
            continue
        states = ctx.store.runs(ctx.study.name).set_index("visit")["state"]
        waiting = [v.key for v in visits if states.get(v.key) not in TERMINAL]
        if not waiting:
            return
        ctx.events.on_status(f"waiting for {len(waiting)} visit(s) held by other workers")
        time.sleep(POLL_S)


def prepare_sweep(
    study: Study,
    *,
    storage: str,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    events: SweepEvents | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> _Context:
    """Register the study, load its data and get its teacher (trained once, then from the cache).

    Args:
        study: the validated study.
        storage: SQLAlchemy URL of the results database.
        device: training device.
        cache_dir: teacher cache and finalist weights folder.
        events: progress hooks.
        stale_after_s: a running visit without a heartbeat for this long is taken over.
    """
    device = torch.device(device)
    events = events or SweepEvents()
    # Everything a user can get wrong is checked before the first write to the store or the first step.
    store = Store.open(storage)
    check_study(store, study)
    cache = open_cache_dir(cache_dir)
    d = study.data
    events.on_status("loading data")
    tdata = load_data(d.dataset, root=d.root, val_fraction=d.val_fraction, subset=None, seed=study.seed,
                      device=device, download=d.download, image_size=d.image_size)
    sdata = tdata if d.subset is None else load_data(
        d.dataset, root=d.root, val_fraction=d.val_fraction, subset=d.subset, seed=study.seed, device=device,
        download=d.download, image_size=d.image_size)
    check_models(study, tdata.info)
    ostorage = optuna_storage(storage)
    row = register_study(store, study)
    events.on_status("preparing the teacher")
    teacher = prepare_teacher(study, device=device, cache_dir=cache, data=tdata,
                              on_epoch=lambda r: events.on_epoch(r, study.teacher.epochs or 1))
    _record_teacher(store, teacher, tdata, device)
    with store.session() as s:
        s.execute(sa.update(StudyRow).where(StudyRow.id == row.id).values(teacher_key=teacher.key))
    return _Context(study, store, row.id, sdata, teacher, device, ostorage, cache / "runs" / study.name,
                    events, stale_after_s, versions=_json(library_versions()))


def run_sweep(
    study: Study,
    *,
    storage: str,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    events: SweepEvents | None = None,
    stale_after_s: float = STALE_AFTER_S,
    max_visits: int | None = None,
) -> pd.DataFrame:
    """Run (or resume, or join as one more worker) the whole study; return the finalists' summary.

    Args:
        study: the validated study.
        storage: SQLAlchemy URL of the results database (Optuna's tables and kdbench's).
        device: training device.
        cache_dir: teacher cache and finalist weights folder.
        events: progress hooks.
        stale_after_s: a running visit without a heartbeat for this long is taken over.
        max_visits: stop after this many visits (for tests and time-boxed workers).
    """
    ctx = prepare_sweep(study, storage=storage, device=device, cache_dir=cache_dir, events=events,
                        stale_after_s=stale_after_s)
    _repair(ctx)
    ctx.events.on_progress(study_progress(ctx.store, study))
    search = plan_search(study)
    fuse = study.search.fuse if max_visits is None else max(1, min(study.search.fuse, max_visits))
    done = 0
    for offset in (0, len(search)):
        visits = search if offset == 0 else plan_finalists(study, ctx.store.runs(study.name))
        # search visits share the study's seed, hence one data order: they can be fused; finalists run alone
        for batch in _claim_loop(ctx, visits, offset, fuse if offset == 0 else 1):
            if len(batch) > 1:
                _run_fused(ctx, batch)
            else:
                _run_visit(ctx, batch[0])
            ctx.events.on_progress(study_progress(ctx.store, study))
            done += len(batch)
            if max_visits is not None and done >= max_visits:
                return finalist_summary(ctx.store, study.name)
    return finalist_summary(ctx.store, study.name)


def finalist_summary(store: Store, name: str) -> pd.DataFrame:
    """Test accuracy of each finalist configuration over its seeds: mean, sd, n, and the teacher's."""
    runs = store.runs(name)
    fin = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete")]
    cols = ["loss", "rank", "temperature", "alpha", "lr", "test_mean", "test_sd", "n", "val_mean"]
    if fin.empty:
        return pd.DataFrame(columns=cols)
    g = fin.groupby(["loss", "rank"], dropna=False)
    out = g.agg(temperature=("temperature", "first"), alpha=("alpha", "first"), lr=("lr", "first"),
                test_mean=("test_acc", "mean"), test_sd=("test_acc", lambda x: float(np.std(x, ddof=1))
                                                         if len(x) > 1 else math.nan),
                n=("test_acc", "size"), val_mean=("val_acc", "mean")).reset_index()
    return out[cols].sort_values(["loss", "rank"], ascending=[False, True]).reset_index(drop=True)
