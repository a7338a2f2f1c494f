"""One attempt's life: from a claimed visit to its recorded end, trained alone or fused with others.

An :class:`Attempt` asks Optuna for the trial (search visits), builds a fresh student, reports each
epoch (to the store, the display and Optuna's pruner) and records whatever stopped it: a result,
pruning, a non-finite loss, Ctrl-C or a bug. A claimed visit is never left running by a live worker.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from kdbench.atomic import write_atomically
from kdbench.config import Study
from kdbench.data import Data
from kdbench.errors import NonFiniteLossError, RetiredAttemptError, StoreError, check_termination, held_signals
from kdbench.evaluate import fit_temperature, inference_ms_per_batch, predict_logits
from kdbench.losses import WEIGHTS
from kdbench.models import build_model, count_parameters
from kdbench.models.sources import study_model
from kdbench.provenance import device_name, kdbench_commit
from kdbench.store import Claimed, Store, finite_or_none, now, params_json
from kdbench.sweep import optuna_bridge
from kdbench.sweep.events import SweepEvents
from kdbench.sweep.plan import BASELINES, Visit, visit_recipe
from kdbench.teacher import Teacher
from kdbench.trackers import FINAL_METRICS, RunRecord, Trackers
from kdbench.train import EpochRecord, KDParams, TrainResult, budget, eval_points, train

__all__ = ["Attempt", "SweepContext", "kd_params", "run_fused", "run_visit"]


@dataclass
class SweepContext:
    """What every attempt of one study in this process shares: the open store, data, teacher, device."""

    study: Study
    store: Store
    study_id: int
    data: Data
    teacher: Teacher
    device: torch.device
    weights_dir: Path
    events: SweepEvents
    stale_after_s: float
    versions: str = ""
    study_uid: str | None = None  # the study row's identity, never reused (its id may be, after a --replace)
    optuna_studies: dict[str, optuna.Study] = field(default_factory=dict)  # by name, opened once per worker
    trackers: Trackers | None = None  # study.log's trackers, each run copied to them once its row is final


class Attempt:
    """One claimed visit from its start (Optuna trial, fresh model) to its recorded end.

    :meth:`finish` records whatever stopped it (a result, pruning, a non-finite loss, Ctrl-C, a bug), so a
    claimed visit is never left running by a live worker.
    """

    def __init__(self, ctx: SweepContext, c: Claimed, fused: int = 1) -> None:
        self.ctx, self.c = ctx, c
        self.visit: Visit = c.visit
        self.trial: optuna.Trial | None = None
        self.link: dict[str, Any] = {}  # the Optuna study and trial, once asked
        self.params: dict[str, float] = {}
        self.model: torch.nn.Module | None = None
        self.kd: KDParams | None = None
        self.records: list[EpochRecord] = []
        self.recipe = visit_recipe(ctx.study, c.visit)  # the student recipe at this visit's budget
        per_epoch, self.steps, self.epochs = budget(self.recipe, len(ctx.data.train))  # steps, epochs it trains
        self.points = len(eval_points(per_epoch, self.steps, self.recipe.eval_every))  # its validation passes
        self.closed = False
        self.started = time.time()
        device = device_name(ctx.device) + (f" · fused x{fused}" if fused > 1 else "")  # how it trained
        self.common: dict[str, Any] = dict(device=device, versions=ctx.versions, commit=kdbench_commit())

    def start(self) -> None:
        """Fail the attempt this one replaces, ask Optuna (search visits), and build the fresh student."""
        ctx, c, visit = self.ctx, self.c, self.visit
        storage = ctx.store.optuna_storage()
        if visit.asks_optuna:  # a planned search visit: an Optuna trial, linked to the run before a signal lands
            with held_signals():
                try:
                    ostudy, self.trial, params = optuna_bridge.ask(storage, ctx.study, visit, c.index, self.points,
                                                                   ctx.optuna_studies)
                except KeyError:  # the Optuna study this worker opened is gone: dropped with its study (--replace)
                    raise StoreError(f"study {ctx.study.name!r} was dropped or replaced in {ctx.store.url} by "
                                     "another process (kdbench sweep --replace); this worker stops") from None
                self.link = dict(optuna_study=ostudy.study_name, trial_number=self.trial.number,
                                 trial_id=self.trial._trial_id)
                ctx.store.update_run(c.run_id, **self.link, temperature=params.get("temperature"),
                                     alpha=params.get("alpha"), lr=params["lr"], params=params_json(params))
        else:
            params = {k: v for k, v in (("temperature", visit.temperature), ("alpha", visit.alpha),
                                        ("lr", visit.lr)) if v is not None} | dict(visit.params)
        self.params = params
        ctx.events.on_visit_start(visit, params)
        torch.manual_seed(visit.seed)
        info, student = ctx.data.info, ctx.study.student
        self.model = build_model(study_model(ctx.study, "student"), **info.model_shape,
                                 pretrained=student.pretrained, weights=student.weights,
                                 model_args=student.model_args, folder=ctx.study.folder).to(ctx.device)
        self.common["parameters"] = count_parameters(self.model)
        warmup = ctx.study.search.warmup_epochs(visit.loss)
        self.kd = None if visit.loss in BASELINES else kd_params(visit.loss, params, warmup)

    def on_epoch(self, rec: EpochRecord) -> None:
        """Record the point's progress (an epoch's end, or a step of ``student.eval_every``), show it, and let
        Optuna's pruner judge it (never at the last point)."""
        check_termination()  # SIGTERM ends the trial here if its exception was swallowed where it landed
        self.records.append(rec)
        self.ctx.store.update_run(self.c.run_id, epochs_done=rec.epoch + 1, heartbeat=now(),
                                  val_acc=finite_or_none(rec.val_acc))
        self.ctx.events.student_point(rec, self.epochs, self.steps if self.recipe.eval_every is not None else None)
        if (self.trial is not None and math.isfinite(rec.val_acc)
                and optuna_bridge.report_epoch(self.trial, rec.val_acc, rec.point, self.points)):
            at = f"step {rec.steps}" if self.recipe.eval_every is not None else f"epoch {rec.epoch + 1}"
            raise optuna.TrialPruned(f"pruned at {at} (val acc {rec.val_acc:.4f})")

    def _close(self, state: str, reason: str | None, **values: Any) -> str:
        # the link again: a Ctrl-C between asking Optuna and the first write must not orphan the trial
        self.ctx.store.finish_run(self.c.run_id, self.records, state=state, error=reason, finished=now(),
                                  **self.common, **self.link, **values)
        self.closed = True
        if self.ctx.trackers is not None:  # a copy of what was just stored; a tracker's failure is only warned of
            self.ctx.trackers.log_run(self._record(state, reason, values))
        self.ctx.events.on_visit_end(self.visit, state, values.get("val_acc"), reason)
        return state

    def _record(self, state: str, reason: str | None, values: dict[str, Any]) -> RunRecord:
        """What the trackers get of this run: what :meth:`_close` stored, with the recipe it trained."""
        ctx, visit, recipe = self.ctx, self.visit, self.recipe
        params: dict[str, Any] = {"method": visit.loss, "stage": visit.stage, **self.params, "seed": visit.seed,
                                  "epochs": self.epochs, "steps": recipe.steps, "budget": visit.budget_label,
                                  "batch_size": recipe.batch_size, "optimizer": recipe.optimizer,
                                  "schedule": recipe.schedule, "weight_decay": recipe.weight_decay,
                                  "student": recipe.model, "teacher": ctx.study.teacher.model,
                                  "dataset": ctx.study.data.dataset, "rank": visit.rank,
                                  "trial_number": self.link.get("trial_number")}
        tags = {"kdbench.study": ctx.study.name, "kdbench.study_uid": ctx.study_uid, "kdbench.stage": visit.stage,
                "kdbench.method": visit.loss, "kdbench.seed": visit.seed, "kdbench.config_hash": ctx.study.hash,
                "kdbench.run_id": self.c.run_id, "kdbench.visit": visit.key, "kdbench.state": state,
                "kdbench.storage": ctx.store.url, "kdbench.device": self.common["device"],
                "kdbench.commit": self.common["commit"], "kdbench.error": reason and reason[:1000]}
        metrics = {k: values.get(k) for k in FINAL_METRICS}
        return RunRecord(ctx.study.name, self.c.run_id, visit.key, state,
                         {k: v for k, v in params.items() if v is not None},
                         {k: str(v) for k, v in tags.items() if v is not None}, list(self.records), metrics,
                         self.started, time.time())

    def finish(self, outcome: TrainResult | BaseException) -> str:
        """Record the outcome; returns the final state (re-raises Ctrl-C and bugs once recorded).

        An attempt that another worker retired (it took the visit over after this one missed its heartbeat)
        writes nothing: it returns ``"retired"`` and the sweep goes on.
        """
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            assert self.model is not None
            extra = _finalist_outputs(self.ctx, self.visit, self.model) if self.visit.stage == "finalist" else {}
            return self._close("complete", None, val_acc=finite_or_none(outcome.val_acc),
                               val_loss=finite_or_none(outcome.val_loss), test_acc=outcome.test_acc,
                               test_loss=outcome.test_loss, wall_time_s=outcome.wall_time_s,
                               samples_per_s=outcome.samples_per_s, **extra)
        except RetiredAttemptError as exc:  # another worker took the visit over: its run is the record
            self.closed = True
            if self.link:  # the store refuses the write and fails this attempt's trial (a no-op if it did already)
                with contextlib.suppress(RetiredAttemptError):
                    self.ctx.store.finish_run(self.c.run_id, [], state="failed", error=str(exc), **self.link)
            self.ctx.events.on_visit_end(self.visit, "retired", None, str(exc))
            return "retired"
        except optuna.TrialPruned as exc:
            return self._close("pruned", str(exc))
        except NonFiniteLossError as exc:  # recorded as failed; the sweep goes on
            if self.trial is not None:
                self.trial.set_user_attr("fail_step", exc.step)
            return self._close("failed", str(exc))
        except BaseException as exc:  # Ctrl-C or a bug: the visit is re-run on resume
            if not self.closed:
                with contextlib.suppress(RetiredAttemptError):  # a run dropped meanwhile (--replace) keeps nothing
                    self._close("interrupted", f"{type(exc).__name__}: {exc}"[:500])
            raise


def kd_params(method: str, params: dict[str, float], warmup_epochs: float = 0.0) -> KDParams:
    """The loss of a visit of ``method`` with these parameters (T, alpha or the two weights, its others)."""
    extra = tuple(sorted((k, v) for k, v in params.items() if k not in ("temperature", "alpha", "lr", *WEIGHTS)))
    return KDParams(params["temperature"], params.get("alpha"), method, params.get("ce_weight"),
                    params.get("kd_weight"), extra, warmup_epochs)


def run_visit(ctx: SweepContext, c: Claimed) -> str:
    """Train one claimed visit and record it; returns its final state.

    Everything after the claim is covered: whatever stops it (Ctrl-C while asking Optuna, a bug), the run
    is recorded as interrupted rather than left running.
    """
    a = Attempt(ctx, c)
    outcome: TrainResult | BaseException
    try:
        a.start()
        assert a.model is not None
        with ctx.store.heartbeat(c.run_id):
            outcome = train(a.model, ctx.data, a.recipe, lr=a.params["lr"], seed=c.visit.seed,
                            teacher=ctx.teacher.signal_for(ctx.data) if a.kd else None, kd=a.kd,
                            augment_kind=ctx.study.data.augment, callback=a.on_epoch,
                            evaluate_test=c.visit.stage == "finalist", eval_every=a.recipe.eval_every)
    except BaseException as exc:
        outcome = exc
    return a.finish(outcome)


def run_fused(ctx: SweepContext, claimed: list[Claimed]) -> None:
    """Train search visits (one seed) together with :func:`kdbench.fused.train_fused`; pruning acts per visit."""
    from kdbench.fused import FusedStudent, train_fused

    attempts = [Attempt(ctx, c, fused=len(claimed)) for c in claimed]
    outcomes: dict[int, TrainResult | BaseException] = {}
    try:
        for i, a in enumerate(attempts):
            try:
                a.start()
            except RetiredAttemptError as exc:  # this visit alone was taken over: the others train
                outcomes[i] = exc
        live = [i for i in range(len(attempts)) if i not in outcomes]
        if live:
            with contextlib.ExitStack() as beats:
                for i in live:
                    beats.enter_context(ctx.store.heartbeat(attempts[i].c.run_id))
                trained = train_fused(
                    [m for i in live if (m := attempts[i].model) is not None], ctx.data, attempts[0].recipe,
                    [FusedStudent(attempts[i].params["lr"], attempts[i].kd, attempts[i].on_epoch) for i in live],
                    seed=claimed[0].visit.seed, teacher=ctx.teacher.signal_for(ctx.data),
                    augment_kind=ctx.study.data.augment, eval_every=attempts[0].recipe.eval_every)
            outcomes.update(zip(live, trained, strict=True))
    except BaseException as exc:
        outcomes = {i: outcomes.get(i, exc) for i in range(len(attempts))}
    raised: BaseException | None = None
    for a, res in zip(attempts, (outcomes[i] for i in range(len(attempts))), strict=True):
        try:
            a.finish(res)
        except BaseException as exc:  # record every visit first, then stop as the sequential path would
            raised = raised or exc
    if raised is not None:
        raise raised


def _finalist_outputs(ctx: SweepContext, visit: Visit, model: torch.nn.Module) -> dict[str, Any]:
    """Keep a finalist's weights (written whole, :func:`kdbench.atomic.write_atomically`), its test predictions
    and logits (float16), and its calibration temperature fitted on validation."""
    ctx.weights_dir.mkdir(parents=True, exist_ok=True)
    wpath = ctx.weights_dir / (visit.key.replace("/", "_").replace("=", "") + ".pt")
    write_atomically(wpath, lambda tmp: torch.save(model.state_dict(), tmp))
    info = ctx.data.info
    logits = predict_logits(model, ctx.data.test.images, info).float().cpu()
    preds = logits.argmax(1).to(torch.int16).numpy()
    val = ctx.data.val  # temperature scaling is fitted here, on validation: the report applies it to the test logits
    temperature = fit_temperature(predict_logits(model, val.images, info), val.labels)
    return dict(weights_path=str(wpath), test_predictions=preds.tobytes(),
                test_logits=logits.half().numpy().tobytes(),  # calibration (ECE, NLL) in the report
                calib_temperature=temperature,
                infer_ms_per_batch=inference_ms_per_batch(model, info, ctx.device))
