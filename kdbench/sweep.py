"""The sweep: a CE baseline and an Optuna study over T × alpha (+ lr), then multi-seed finalists.

Plan → claim → run. The plan is the list of visits a study needs (each (T, alpha) grid point
``trials_per_point`` times, the CE baseline's lr trials, then the finalists' seeds). Workers claim
visits in the store under a unique constraint, so any number of ``kdbench sweep`` processes, on one
machine or many sharing a database, split the work without running a visit twice. A visit whose
worker died (a stale heartbeat) or was interrupted is claimed again; completed, pruned and failed
visits are final. Every search visit is one Optuna trial (KD trials in the study ``<name>``, CE trials
in ``<name>.ce``): T and alpha are fixed by the visit through ``PartialFixedSampler`` while the
sampler draws lr, so Optuna's own tools see the study as it is. Selection uses validation accuracy;
the test set is only evaluated for finalists.
"""

from __future__ import annotations

import contextlib
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

from kdbench.config import Range, Study
from kdbench.data import Data, load_data
from kdbench.errors import NonFiniteLossError, StoreError
from kdbench.models import build_model, count_parameters
from kdbench.provenance import device_name, kdbench_commit, library_versions
from kdbench.store import EpochRow, RunRow, Store, StudyRow, TeacherRow, _now, worker_id
from kdbench.teacher import Teacher, default_cache_dir, prepare_teacher
from kdbench.train import EpochRecord, KDParams, TrainResult, inference_ms_per_batch, predict_logits, train

__all__ = [
    "STALE_AFTER_S",
    "SweepEvents",
    "Visit",
    "ce_trials",
    "finalist_summary",
    "plan_finalists",
    "plan_search",
    "register_study",
    "run_sweep",
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


def register_study(store: Store, study: Study) -> StudyRow:
    """Create the study's row, or check that the stored one has the same config hash."""
    row = store.study(study.name)
    if row is None:
        try:
            with store.session() as s:
                s.add(StudyRow(name=study.name, config=study.model_dump_json(), config_hash=study.hash,
                               commit=kdbench_commit()))
        except IntegrityError:
            pass
        row = store.study(study.name)
        assert row is not None
    if row.config_hash != study.hash:
        raise StoreError(
            f"study {study.name!r} in {store.url} was created from another config (hash {row.config_hash}, "
            f"this one is {study.hash}); start a new study with --set name={study.name}-2, "
            f"or drop the old one with --replace"
        )
    return row


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


def _is_stale(run: RunRow, stale_after_s: float) -> bool:
    if run.state != "running":
        return False
    alive = _pid_alive(run.owner)
    if alive is not None:
        return not alive
    return run.heartbeat is None or (_now() - run.heartbeat).total_seconds() > stale_after_s


def claim(store: Store, study_id: int, visit: Visit, config_hash: str, stale_after_s: float) -> RunRow | None:
    """Claim ``visit`` for this worker: a new row, or one whose worker died or was interrupted.

    Returns the claimed row, or None if the visit is done or another live worker holds it.
    """
    me = worker_id()
    fields = dict(kind=visit.kind, loss=visit.loss, seed=visit.seed, temperature=visit.temperature,
                  alpha=visit.alpha, lr=visit.lr, rank=visit.rank, config_hash=config_hash)
    try:
        with store.session() as s:
            run = s.scalar(sa.select(RunRow).where(RunRow.study_id == study_id, RunRow.visit == visit.key))
            if run is None:
                run = RunRow(study_id=study_id, visit=visit.key, state="running", owner=me, heartbeat=_now(),
                             started=_now(), **fields)
                s.add(run)
                s.flush()
                return run
            if not (run.state == "interrupted" or _is_stale(run, stale_after_s)):
                return None
            old = run.trial_id, run.optuna_study, run.state, run.owner
            taken = s.execute(  # type: ignore[attr-defined]
                sa.update(RunRow)
                .where(RunRow.id == run.id, RunRow.attempt == run.attempt, RunRow.state == run.state)
                .values(state="running", owner=me, heartbeat=_now(), started=_now(), attempt=run.attempt + 1,
                        error=f"attempt {run.attempt} {'was interrupted' if old[2] == 'interrupted' else 'died'}"
                              f" ({old[3]})", epochs_done=0, trial_id=None, trial_number=None, **fields)
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken != 1:
                return None
            s.execute(sa.delete(EpochRow).where(EpochRow.run_id == run.id))
            s.expire(run)
            run = s.get(RunRow, run.id)
            assert run is not None
            run.__dict__["_previous_trial"] = old[:2]
            return run
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


@dataclass
class SweepEvents:
    """Hooks for progress displays; every one is optional."""

    on_visit_start: Callable[[Visit, dict[str, float]], None] = lambda v, p: None
    on_epoch: Callable[[EpochRecord, int], None] = lambda r, total: None
    on_visit_end: Callable[[Visit, str, float | None], None] = lambda v, state, acc: None
    on_status: Callable[[str], None] = lambda msg: None


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
    """Optuna's RDB storage on the same database (SQLite gets the same busy timeout as ours)."""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


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
    lo, hi = min(space), max(space)
    geometric = lo > 0 and len(space) > 2 and hi / lo >= 8
    return trial.suggest_float(name, lo, hi, log=geometric)


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
    return ostudy, trial, params


def _fail_previous(ctx: _Context, run: RunRow) -> None:
    prev = run.__dict__.get("_previous_trial")
    if not prev or prev[0] is None:
        return
    trial_id = prev[0]
    try:
        t = ctx.storage.get_trial(trial_id)
        if not t.state.is_finished():
            ctx.storage.set_trial_system_attr(trial_id, "fail_reason", f"kdbench: worker died ({run.error})")
            ctx.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    except (KeyError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        pass


def _update(ctx: _Context, run_id: int, **values: Any) -> None:
    with ctx.store.session() as s:
        s.execute(sa.update(RunRow).where(RunRow.id == run_id).values(**values))


@dataclass
class _Started:
    """A claimed visit ready to train: its Optuna trial (search visits), parameters, fresh model and callback."""

    run: RunRow
    visit: Visit
    params: dict[str, float]
    model: torch.nn.Module
    kd: KDParams | None
    on_epoch: Callable[[EpochRecord], None]
    ostudy: optuna.Study | None
    trial: optuna.Trial | None


def _run_visit(ctx: _Context, run: RunRow, visit: Visit, index: int) -> str:
    """Train one claimed visit and record it; returns its final state."""
    v = _start_visit(ctx, run, visit, index)
    try:
        with _Heartbeat(ctx.store, run.id):
            res: TrainResult | BaseException = train(
                v.model, ctx.data, ctx.study.student, lr=v.params["lr"], seed=visit.seed,
                teacher=ctx.teacher.signal_for(ctx.data) if v.kd else None, kd=v.kd,
                augment_kind=ctx.study.data.augment, callback=v.on_epoch, evaluate_test=visit.kind == "finalist")
    except BaseException as exc:
        res = exc
    return _finish_visit(ctx, v, res)


def _run_fused(ctx: _Context, claimed: list[tuple[RunRow, Visit, int]]) -> None:
    """Train search visits (one seed) together with :func:`kdbench.fused.train_fused`; pruning acts per visit."""
    from kdbench.fused import FusedStudent, train_fused

    started = [_start_visit(ctx, run, visit, index) for run, visit, index in claimed]
    with contextlib.ExitStack() as beats:
        for v in started:
            beats.enter_context(_Heartbeat(ctx.store, v.run.id))
        try:
            outcomes: list[TrainResult | BaseException] = list(train_fused(
                [v.model for v in started], ctx.data, ctx.study.student,
                [FusedStudent(v.params["lr"], v.kd, v.on_epoch) for v in started], seed=claimed[0][1].seed,
                teacher=ctx.teacher.signal_for(ctx.data), augment_kind=ctx.study.data.augment))
        except BaseException as exc:
            outcomes = [exc] * len(started)
    raised: BaseException | None = None
    for v, res in zip(started, outcomes, strict=True):
        try:
            _finish_visit(ctx, v, res)
        except BaseException as exc:  # record every visit first, then stop as the sequential path would
            raised = raised or exc
    if raised is not None:
        raise raised


def _start_visit(ctx: _Context, run: RunRow, visit: Visit, index: int) -> _Started:
    study = ctx.study
    _fail_previous(ctx, run)
    ostudy: optuna.Study | None = None
    trial: optuna.Trial | None = None
    if visit.kind in ("kd", "ce"):
        ostudy, trial = _ask(ctx, visit, index)[:2]
        params = dict(trial.params)
        _update(ctx, run.id, optuna_study=ostudy.study_name, trial_number=trial.number, trial_id=trial._trial_id,
                temperature=params.get("temperature"), alpha=params.get("alpha"), lr=params["lr"])
    else:
        params = {k: v for k, v in (("temperature", visit.temperature), ("alpha", visit.alpha),
                                    ("lr", visit.lr)) if v is not None}
    ctx.events.on_visit_start(visit, params)
    total_epochs = study.student.epochs or 1

    def on_epoch(rec: EpochRecord) -> None:
        with ctx.store.session() as s:
            s.add(EpochRow(run_id=run.id, epoch=rec.epoch, train_loss=_num(rec.train_loss), val_acc=_num(rec.val_acc),
                           val_loss=_num(rec.val_loss), seconds=rec.seconds, lr=rec.lr))
            s.execute(sa.update(RunRow).where(RunRow.id == run.id)
                      .values(epochs_done=rec.epoch + 1, heartbeat=_now(), val_acc=_num(rec.val_acc)))
        ctx.events.on_epoch(rec, total_epochs)
        if trial is not None and math.isfinite(rec.val_acc):
            trial.report(rec.val_acc, rec.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {rec.epoch} (val acc {rec.val_acc:.4f})")

    torch.manual_seed(visit.seed)
    info = ctx.data.info
    model = build_model(study.student.model, in_channels=info.channels, num_classes=info.num_classes,
                        image_size=info.image_size, pretrained=study.student.pretrained).to(ctx.device)
    kd = KDParams(params["temperature"], params["alpha"]) if visit.loss == "kd" else None
    return _Started(run, visit, params, model, kd, on_epoch, ostudy, trial)


def _finish_visit(ctx: _Context, v: _Started, outcome: TrainResult | BaseException) -> str:
    """Record a trained visit (or the exception that stopped it); returns its final state."""
    run, visit, model, ostudy, trial = v.run, v.visit, v.model, v.ostudy, v.trial
    info = ctx.data.info
    common = dict(finished=_now(), device=device_name(ctx.device), versions=ctx.versions,
                  commit=kdbench_commit(), parameters=count_parameters(model))
    try:
        if isinstance(outcome, BaseException):
            raise outcome
        res = outcome
    except optuna.TrialPruned as exc:
        _update(ctx, run.id, state="pruned", error=str(exc), **common)
        if ostudy is not None and trial is not None:
            ostudy.tell(trial, state=optuna.trial.TrialState.PRUNED)
        ctx.events.on_visit_end(visit, "pruned", None)
        return "pruned"
    except NonFiniteLossError as exc:
        _update(ctx, run.id, state="failed", error=str(exc), **common)
        if ostudy is not None and trial is not None:
            trial.set_user_attr("fail_reason", str(exc))
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
        ctx.events.on_visit_end(visit, "failed", None)
        return "failed"
    except BaseException as exc:  # Ctrl-C or a bug: the visit is re-run on resume
        _update(ctx, run.id, state="interrupted", error=f"{type(exc).__name__}: {exc}"[:500], **common)
        if ostudy is not None and trial is not None:
            trial.set_user_attr("fail_reason", f"interrupted: {type(exc).__name__}")
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise

    extra: dict[str, Any] = {}
    if visit.kind == "finalist":
        ctx.weights_dir.mkdir(parents=True, exist_ok=True)
        wpath = ctx.weights_dir / (visit.key.replace("/", "_").replace("=", "") + ".pt")
        torch.save(model.state_dict(), wpath)
        preds = predict_logits(model, ctx.data.test.images, info).argmax(1).to(torch.int16).cpu().numpy()
        extra = dict(weights_path=str(wpath), test_predictions=preds.tobytes(),
                     infer_ms_per_batch=inference_ms_per_batch(model, info, ctx.device))
    _update(ctx, run.id, state="complete", val_acc=_num(res.val_acc), val_loss=_num(res.val_loss),
            test_acc=res.test_acc, test_loss=res.test_loss, wall_time_s=res.wall_time_s,
            samples_per_s=res.samples_per_s, error=None, **common, **extra)
    if ostudy is not None and trial is not None:
        ostudy.tell(trial, res.val_acc)
    ctx.events.on_visit_end(visit, "complete", res.val_acc)
    return "complete"


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _repair(ctx: _Context) -> None:
    """Finish Optuna trials whose run was recorded but whose worker died before telling Optuna."""
    runs = ctx.store.runs(ctx.study.name)
    for _, r in runs[runs["state"].isin(TERMINAL)].iterrows():
        tid = _trial_id(ctx, r["run_id"])
        if tid is None:
            continue
        t = ctx.storage.get_trial(tid)
        if t.state.is_finished():
            continue
        if r["state"] == "complete" and r["val_acc"] is not None:
            ctx.storage.set_trial_state_values(tid, optuna.trial.TrialState.COMPLETE, [float(r["val_acc"])])
        else:
            state = optuna.trial.TrialState.PRUNED if r["state"] == "pruned" else optuna.trial.TrialState.FAIL
            ctx.storage.set_trial_state_values(tid, state)


def _trial_id(ctx: _Context, run_id: int) -> int | None:
    with ctx.store.session() as s:
        return s.scalar(sa.select(RunRow.trial_id).where(RunRow.id == run_id))


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


def _claim_loop(
    ctx: _Context, visits: list[Visit], offset: int, k: int = 1
) -> Iterator[list[tuple[RunRow, Visit, int]]]:
    """Yield up to ``k`` claimed visits at a time until every one of ``visits`` is final (waiting for others')."""
    while True:
        batch = []
        for i, v in enumerate(visits):
            run = claim(ctx.store, ctx.study_id, v, ctx.study.hash, ctx.stale_after_s)
            if run is not None:
                batch.append((run, v, offset + i))
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
    device = torch.device(device)
    events = events or SweepEvents()
    store = Store.open(storage)
    ostorage = optuna_storage(storage)
    row = register_study(store, study)
    cache = Path(cache_dir or default_cache_dir())
    d = study.data
    events.on_status("loading data")
    tdata = load_data(d.dataset, root=d.root, val_fraction=d.val_fraction, subset=None, seed=study.seed,
                      device=device, download=d.download, image_size=d.image_size)
    sdata = tdata if d.subset is None else load_data(
        d.dataset, root=d.root, val_fraction=d.val_fraction, subset=d.subset, seed=study.seed, device=device,
        download=d.download, image_size=d.image_size)
    events.on_status("preparing the teacher")
    teacher = prepare_teacher(study, device=device, cache_dir=cache, data=tdata,
                              on_epoch=lambda r: events.on_epoch(r, study.teacher.epochs or 1))
    _record_teacher(store, teacher, tdata, device)
    with store.session() as s:
        s.execute(sa.update(StudyRow).where(StudyRow.id == row.id).values(teacher_key=teacher.key))
    ctx = _Context(study, store, row.id, sdata, teacher, device, ostorage, cache / "runs" / study.name,
                   events, stale_after_s, versions=_json(library_versions()))
    _repair(ctx)
    done = 0
    search = plan_search(study)
    fuse = study.search.fuse if max_visits is None else max(1, min(study.search.fuse, max_visits))
    for batch in _claim_loop(ctx, search, 0, fuse):
        if len(batch) > 1:  # search visits share the study's seed, hence one data order
            _run_fused(ctx, batch)
        else:
            _run_visit(ctx, *batch[0])
        done += len(batch)
        if max_visits is not None and done >= max_visits:
            return finalist_summary(store, study.name)
    finals = plan_finalists(study, store.runs(study.name))
    for [(run, visit, index)] in _claim_loop(ctx, finals, len(search)):
        _run_visit(ctx, run, visit, index)
        done += 1
        if max_visits is not None and done >= max_visits:
            break
    return finalist_summary(store, study.name)


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
