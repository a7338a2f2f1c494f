"""Running a study: prepare it once (check, register, data, teacher), then claim and train its visits.

:func:`run_sweep` runs, resumes, or joins as one more worker: it works through the search visits, then
extends the lr list of any arm whose best lr is an end of it (:mod:`kdbench.sweep.extend`, one step at a time,
each planned from the results of the steps before), then plans the finalists from all of these results and
works through them, claiming each visit in the store
so that any number of workers split the work. :func:`work_sweep` is the same without the finalists' summary at
the end: what a worker started by ``--workers`` runs, reading plain rows, so it never imports pandas.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kdbench.config import Study
from kdbench.data import Data, DatasetInfo, Split, load_study_raw, split_data
from kdbench.defaults import POLL_S, STALE_AFTER_S
from kdbench.errors import CheckpointError, ConfigError, StoreError, check_termination, held_signals
from kdbench.models import build_model
from kdbench.models.sources import study_fingerprint, study_model
from kdbench.provenance import library_versions
from kdbench.store import Claimed, Store
from kdbench.sweep import optuna_bridge
from kdbench.sweep.attempt import SweepContext, run_fused, run_visit
from kdbench.sweep.events import TERMINAL, SweepEvents, study_progress
from kdbench.sweep.extend import plan_extension
from kdbench.sweep.fuse import FusePlan, fuse_plan
from kdbench.sweep.plan import Visit, plan_search, visit_recipe
from kdbench.sweep.recheck import plan_recheck, rechecked_finalists
from kdbench.teacher import open_cache_dir, prepare_teacher, teacher_record
from kdbench.trackers import Trackers

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_models", "prepare_sweep", "run_sweep", "work_sweep"]


def check_models(study: Study, info: DatasetInfo) -> dict[str, dict[str, str]]:
    """Build the teacher (with ``teacher.checkpoint``) and the student once, so that an unknown model or
    a bad weights file is reported before anything is trained or stored.

    Returns:
        For each model from outside the zoo, by section: its name, its fingerprint (what the study hash holds)
        and its architecture (a digest of its parameters' names and shapes), for every run's provenance.

    Raises:
        ConfigError: an unknown model name.
        CheckpointError: a weights file that is not a state dict of that model for this dataset.
    """
    t = study.teacher
    t_weights = ("checkpoint", t.checkpoint) if t.checkpoint else ("pretrained", t.pretrained)
    s_weights = ("pretrained", study.student.pretrained)
    out: dict[str, dict[str, str]] = {}
    for section, recipe, (weights_key, weights) in (("teacher", t, t_weights), ("student", study.student, s_weights)):
        try:
            model = build_model(study_model(study, section), **info.model_shape, pretrained=weights,
                                weights=recipe.weights, model_args=recipe.model_args, folder=study.folder)
        except ConfigError as exc:
            raise ConfigError(f"{section}.model: {exc}") from None
        except CheckpointError as exc:
            raise CheckpointError(f"{section}.{weights_key}: {exc}") from None
        if ":" in recipe.model:
            shapes = json.dumps([(k, list(v.shape)) for k, v in model.state_dict().items()])
            out[section] = {"model": recipe.model, "architecture": hashlib.sha256(shapes.encode()).hexdigest()[:16],
                            "fingerprint": study_fingerprint(study, section)}
    return out


def prepare_sweep(
    study: Study,
    *,
    storage: str | Store,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    events: SweepEvents | None = None,
    stale_after_s: float = STALE_AFTER_S,
    replace: bool = False,
    sets: tuple[DatasetInfo, Split, Split] | None = None,
) -> SweepContext:
    """Check everything, get the teacher (trained once, then from the cache), then register the study.

    Every input a user can get wrong (the study's name against the store, the data, the models and their
    weights, the teacher's floor) is checked before the first write to the store, so a refused input leaves
    the store as it was; ``replace`` drops a stored study of the same name only then.

    Args:
        study: the validated study.
        storage: the open store, or the SQLAlchemy URL of the results database.
        device: training device.
        cache_dir: teacher cache and finalist weights folder.
        events: progress hooks.
        stale_after_s: a running visit without a heartbeat for this long is taken over.
        replace: drop a stored study of the same name (its runs, epochs and Optuna trials) once all is checked.
        sets: the official training and test sets already read (:func:`kdbench.data.from_arrays`,
            :func:`kdbench.data.load_raw`), split as the study's ``data`` section says instead of reading its files.
    """
    device = torch.device(device)
    warn = events.on_log if events is not None else logging.getLogger(__name__).warning  # a tracker's failure
    events = events or SweepEvents()
    store = Store.get(storage)
    if not replace:
        store.check_study(study)
    cache = open_cache_dir(cache_dir)
    # study.log's trackers, opened before any training: a missing package or a bad tracking URI stops the sweep here
    trackers = Trackers.open(study.log, study.name, cache, on_warning=warn) if study.log else None
    d = study.data
    events.on_status("loading data")
    if sets is None:  # read once (an hf set decodes every image), split for the teacher and the students
        info, train, test, root = load_study_raw(d, study.folder)
    else:
        (info, train, test), root = sets, None

    def split(subset: bool) -> Data:
        return split_data(info, train, test, root=root, val_fraction=d.val_fraction,
                          subset=d.subset if subset else None, seed=study.seed, device=device)

    tdata = split(subset=False)
    if len(tdata.val) == 0:
        raise ConfigError(f"data.val_fraction: {d.val_fraction:g} leaves no validation set, and a sweep chooses its "
                          "cells on validation accuracy; set it to e.g. 0.1")
    sdata = tdata if d.subset is None else split(subset=True)
    if not replace:
        store.check_study(study, tdata.fingerprint)  # data.root is not in the hash: the same config, other files
    models = check_models(study, tdata.info)
    if study.teacher.cache == "fixed" and d.augment != "none":
        events.on_log(f"{study.name}: teacher.cache: fixed with data.augment: {d.augment}: the students see "
                      "augmented images, the teacher's cached logits are of the clean ones (cache: {views: K} or "
                      "live match them)")
    events.on_status("preparing the teacher")
    teacher = prepare_teacher(study, device=device, cache_dir=cache, data=tdata,
                              on_epoch=lambda r: events.teacher_epoch(r, study.teacher.epochs or 1))
    if replace:
        store.drop_study(study.name)
    store.optuna_storage()  # Optuna's tables before the first kdbench row
    row = store.register_study(study, tdata.fingerprint)
    stored = store.teacher(teacher.key)
    if stored is None:
        store.record_teacher(**teacher_record(teacher, tdata, device))
    elif stored.test_logits is None:  # recorded before schema 2 kept the teacher's test logits (calibration)
        store.set_teacher_logits(teacher.key, teacher_record(teacher, tdata, device)["test_logits"])
    store.set_study_teacher(row.id, teacher.key)
    versions = {**library_versions(), **({"models": models} if models else {})}  # a user's model: its fingerprint
    return SweepContext(study, store, row.id, sdata, teacher, device, cache / "runs" / study.name, events,
                        stale_after_s, versions=json.dumps(versions, sort_keys=True), study_uid=row.uid,
                        trackers=trackers)


def release_memory() -> None:
    """Collect cycles and hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere): freed tensors below glibc's mmap threshold otherwise stay resident in the heap, and a worker's
    peak grows with each trial's leftovers."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): its allocator keeps its own policy
        return
    libc.malloc_trim(0)


def _interrupt(ctx: SweepContext, claimed: list[int], exc: BaseException) -> None:
    """Record as interrupted the claimed runs this worker still holds running as it stops on ``exc`` (the claims
    a signal caught before their trials began); the error that stops it stays the one the user sees."""
    try:
        ctx.store.interrupt_claims(claimed, f"{type(exc).__name__}: {exc}"[:500])
    except Exception:  # the store itself failing (the error being raised, often): the next claim retires them
        logging.getLogger(__name__).warning("could not record %d claimed run(s) as interrupted", len(claimed),
                                            exc_info=True)


def _claim_loop(ctx: SweepContext, visits: list[Visit], offset: int, k: int,
                claimed: list[int]) -> Iterator[list[Claimed]]:
    """Yield up to ``k`` claimed visits at a time until every one of ``visits`` is final (waiting for others').

    One read of the study's run states per batch picks the candidates, so a batch costs one query and a
    transaction per visit tried, not one per visit of the study. Each claim's run id is added to ``claimed``
    before a signal landing in the claim is raised, so the caller can record the run as interrupted.
    """
    while True:
        check_termination()  # a SIGTERM whose exception was swallowed where it landed stops the sweep here
        ctx.store.check_file()  # a deleted database stops the sweep here, not after every visit has trained
        row = ctx.store.study(ctx.study.name)
        if row is None or row.id != ctx.study_id or row.uid != ctx.study_uid:  # dropped by another's --replace
            raise StoreError(f"study {ctx.study.name!r} was dropped or replaced in {ctx.store.url} by another "
                             "process (kdbench sweep --replace); this worker stops")
        states = {r.visit: r.state for r in ctx.store.run_states(ctx.study_id)}
        batch: list[Claimed] = []
        for i, v in enumerate(visits):
            if states.get(v.key) in TERMINAL:
                continue
            first = batch[0].visit if batch else v  # a fused step shares one batch order (one seed) and one
            if (v.seed, visit_recipe(ctx.study, v)) != (first.seed, visit_recipe(ctx.study, first)):  # recipe (one
                break  # budget, one label smoothing)
            methods = {b.visit.loss for b in batch} - {"ce"}  # and one distillation method (CE joins any)
            if methods and v.loss != "ce" and v.loss not in methods:
                break
            with held_signals():
                c = ctx.store.claim(ctx.study_id, v, offset + i, ctx.study.hash, ctx.stale_after_s, ctx.study_uid)
                if c is not None:
                    claimed.append(c.run_id)
            if c is not None:
                batch.append(c)
                if len(batch) == k:
                    break
        if batch:
            yield batch
            continue
        waiting = [v.key for v in visits if states.get(v.key) not in TERMINAL]
        if not waiting:
            return
        ctx.events.on_status(f"waiting for {len(waiting)} visit(s) held by other workers")
        time.sleep(POLL_S)


def run_sweep(
    study: Study,
    *,
    storage: str | Store,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    events: SweepEvents | None = None,
    stale_after_s: float = STALE_AFTER_S,
    max_visits: int | None = None,
    fuse: int | None = None,
    replace: bool = False,
    sets: tuple[DatasetInfo, Split, Split] | None = None,
) -> pd.DataFrame:
    """Run (or resume, or join as one more worker) the whole study; return the finalists' summary.

    Args:
        study: the validated study.
        storage: the open store, or the SQLAlchemy URL of the results database (Optuna's tables and kdbench's).
        device: training device.
        cache_dir: teacher cache and finalist weights folder.
        events: progress hooks.
        stale_after_s: a running visit without a heartbeat for this long is taken over.
        max_visits: stop after this many visits (for tests and time-boxed workers).
        fuse: fuse up to this many search visits per step whatever the device (default: ``search.fuse`` as
            :func:`kdbench.sweep.fuse.fuse_plan` applies it: sequential on the CPU).
        replace: drop a stored study of the same name once the inputs are checked (see :func:`prepare_sweep`).
        sets: the official training and test sets already read, instead of the data section's files (see
            :func:`prepare_sweep`).
    """
    store = Store.get(storage)
    work_sweep(study, storage=store, device=device, cache_dir=cache_dir, events=events, stale_after_s=stale_after_s,
               max_visits=max_visits, fuse=fuse, replace=replace, sets=sets)
    return store.finalist_summary(study.name)


def work_sweep(
    study: Study,
    *,
    storage: str | Store,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    events: SweepEvents | None = None,
    stale_after_s: float = STALE_AFTER_S,
    max_visits: int | None = None,
    fuse: int | None = None,
    replace: bool = False,
    sets: tuple[DatasetInfo, Split, Split] | None = None,
) -> int:
    """:func:`run_sweep` without the summary at the end: prepare the study, then train the visits this process
    claims until every one is final (or ``max_visits`` are done). Every read is of plain rows, so the process
    never imports pandas (~95 MiB resident, pyarrow included).

    Args:
        study, storage, device, cache_dir, events, stale_after_s, max_visits, fuse, replace, sets: as
            :func:`run_sweep`.

    Returns:
        How many visits this process trained.
    """
    ctx = prepare_sweep(study, storage=storage, device=device, cache_dir=cache_dir, events=events,
                        stale_after_s=stale_after_s, replace=replace, sets=sets)
    optuna_bridge.repair(ctx.store, study, ctx.study_id, stale_after_s)
    release_memory()  # the files read and the official training set split: freed, given back before training
    ctx.events.on_progress(study_progress(ctx.store, study, ctx.study_id))
    search = plan_search(study)
    plan = fuse_plan(study, ctx.device, ctx.data.info) if fuse is None else \
        FusePlan(fuse, f"fusing up to {fuse} search visits per step (set by the caller)")
    if plan.why:
        ctx.events.on_log(f"{study.name}: {plan.why}")
    k = plan.k if max_visits is None else max(1, min(plan.k, max_visits))
    done = 0
    # what set-up left alive (torch, Optuna, SQLAlchemy, the data, the teacher: ~270k objects) is moved out of
    # the collector's reach, so the collection after each trial walks only what trials made (a full one took
    # ~0.2 s per trial on 2 CPU cores); given back to the collector when this worker stops
    gc.freeze()
    claimed: list[int] = []  # claims not yet known to be recorded (a trial records itself once it has begun)
    try:
        for stage in ("search", "extension", "recheck", "finalists"):
            while True:  # the search and the finalists once; the extension one step at a time until nothing is new
                if stage == "search":
                    visits = search
                else:
                    runs = ctx.store.run_records(study.name)
                    visits = {"extension": plan_extension, "recheck": plan_recheck,
                              "finalists": rechecked_finalists}[stage](study, runs)
                    final = {r["visit"] for r in runs if r["state"] in TERMINAL}
                    if stage == "extension" and {v.key for v in visits} <= final:
                        break  # every arm's best lr is interior, or an end after search.lr_extend steps
                # search visits of one replicate share its seed, hence one data order: they can be fused (extension
                # visits likewise); finalists and probes alone
                for batch in _claim_loop(ctx, visits, 0 if stage == "search" else len(search),
                                         1 if stage in ("recheck", "finalists") else k, claimed):
                    if len(batch) > 1:
                        run_fused(ctx, batch)
                    else:
                        run_visit(ctx, batch[0])
                    claimed.clear()
                    release_memory()  # one trial's buffers, so the next one starts from what the process holds
                    ctx.events.on_progress(study_progress(ctx.store, study, ctx.study_id))
                    done += len(batch)
                    if max_visits is not None and done >= max_visits:
                        return done
                if stage != "extension":
                    break
        return done
    except BaseException as exc:  # a signal or an error between a claim and its trial's start: recorded too
        _interrupt(ctx, claimed, exc)
        raise
    finally:
        gc.unfreeze()
