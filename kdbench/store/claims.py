"""Every write of kdbench's tables: register a study, claim a visit (exactly once), beat, finish a run.

The exactly-once protocol: a visit is claimed by inserting its run row under the unique (study, visit)
constraint, so two workers never run the same visit. A visit whose worker died (a dead PID on this
host, or no heartbeat for ``stale_after_s``) or was interrupted is claimed again: the old attempt stays
as ``<visit>#<attempt>`` (failed with the reason, or interrupted) and the visit gets a new row. A run
ends in one transaction: its state, results and epochs together, never half a run.

The module runs past 400 lines because every conditional write of that protocol (claim, retire, beat, finish,
interrupt) checks the same owner and state columns, and reading them side by side is how a race is caught.

:class:`Claims` is one half of :class:`kdbench.store.Store` (the other, :class:`~kdbench.store.queries.Queries`,
reads).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import secrets
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from kdbench.defaults import HEARTBEAT_S
from kdbench.errors import RetiredAttemptError, StoreError, held_signals
from kdbench.provenance import kdbench_commit
from kdbench.store.db import Database
from kdbench.store.keys import retired_key
from kdbench.store.queries import params_json
from kdbench.store.schema import EpochRow, RunRow, StudyRow, TeacherRow, now
from kdbench.store.trials import close_trial

if TYPE_CHECKING:
    from kdbench.config import Study

__all__ = ["Claimed", "Claims", "EpochLike", "VisitLike", "finite_or_none", "pid_alive", "worker_id"]

log = logging.getLogger(__name__)


@functools.cache
def worker_id() -> str:
    """``host:pid:pidns:token``, the owner written on claimed runs and on Optuna trials.

    The PID namespace (the inode of ``/proc/self/ns/pid``) tells whether a pid on this host name is a pid
    this process can see: a worker in a container that shares the host name but not the PID namespace is
    never judged dead by a pid check from outside it. The random token makes the id unique even when a pid
    is reused.
    """
    try:
        ns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:  # not Linux
        ns = "-"
    return f"{socket.gethostname()}:{os.getpid()}:{ns}:{secrets.token_hex(4)}"


def finite_or_none(x: float | None) -> float | None:
    """``x`` as the store keeps it: a non-finite number (a diverged run's loss) becomes NULL."""
    return None if x is None or not math.isfinite(x) else float(x)


def pid_alive(owner: str | None) -> bool | None:
    """Whether an owner's process lives: True/False when its pid is one this process can see (this host and,
    for ``host:pid:pidns:token`` owners, this PID namespace); None otherwise (judge it by its heartbeat)."""
    if not owner or ":" not in owner:
        return None
    parts = owner.split(":")
    host, pid = parts[0], parts[1]
    me = worker_id().split(":")
    if host != me[0] or not pid.isdigit():
        return None
    if len(parts) >= 3 and parts[2] != me[2]:  # another PID namespace (a container): its pids are not ours
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
    if pid_alive(run.owner) is False:
        return f"worker {run.owner} died (its process is gone) at epoch {run.epochs_done}"
    age = math.inf if run.heartbeat is None else (now() - run.heartbeat).total_seconds()
    if age > stale_after_s:
        return f"worker {run.owner} stopped: no heartbeat for {age:.0f} s (limit {stale_after_s:g} s)"
    return None


class VisitLike(Protocol):
    """What a claim needs of a planned visit (:class:`kdbench.sweep.plan.Visit` is one)."""

    @property
    def key(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def loss(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def alpha(self) -> float | None: ...
    @property
    def params(self) -> tuple[tuple[str, float], ...]: ...
    @property
    def lr(self) -> float | None: ...
    @property
    def rank(self) -> int | None: ...
    @property
    def budget_label(self) -> str | None: ...


class EpochLike(Protocol):
    """What the store keeps of one evaluation point (:class:`kdbench.train.EpochRecord` is one)."""

    @property
    def epoch(self) -> int: ...
    @property
    def point(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def train_loss(self) -> float: ...
    @property
    def val_acc(self) -> float: ...
    @property
    def val_loss(self) -> float: ...
    @property
    def seconds(self) -> float: ...
    @property
    def lr(self) -> float | None: ...


@dataclass(frozen=True)
class Claimed:
    """A visit this worker now owns: its new run row, and the attempt it replaced (if any)."""

    run_id: int
    visit: Any  # the VisitLike that was claimed, as the caller passed it
    index: int
    replaced_trial: int | None = None  # Optuna trial id of a dead attempt, to be marked failed
    replaced_reason: str | None = None


class Claims(Database):
    """The writes of the store."""

    def check_study(self, study: Study, data: str | None = None) -> StudyRow | None:
        """The stored row of ``study`` (None if new), after checking it was made from the same config and,
        given ``data`` (:attr:`kdbench.data.Data.fingerprint`), from the same data.

        Raises:
            StoreError: the name is taken by a study with another config hash, or one run on other data.
        """
        if not self.ready:  # no kdbench tables yet (a new database): nothing stored, and nothing created
            return None
        with self.session() as s:
            row = s.scalar(sa.select(StudyRow).where(StudyRow.name == study.name))
        if row is not None and row.config_hash != study.hash:
            raise StoreError(
                f"study {study.name!r} in {self.url} was created from another config (hash {row.config_hash}, "
                f"this one is {study.hash}); start a new study with --set name={study.name}-2, "
                f"or drop the old one with --replace"
            )
        if row is not None and data is not None and row.data_fingerprint not in (None, data):
            raise StoreError(
                f"study {study.name!r} in {self.url} was run on other data (fingerprint {row.data_fingerprint}; "
                f"the files found for data.dataset: {study.data.dataset} now give {data}); start a new study "
                f"with --set name={study.name}-2, or drop the old one with --replace"
            )
        return row

    def register_study(self, study: Study, data: str | None = None) -> StudyRow:
        """Create the study's row, or check that the stored one has the same config hash (and the same
        ``data`` fingerprint, which a row stored before schema 2 takes on)."""
        self.ensure_tables()
        row = self.check_study(study, data)
        if row is None:
            with contextlib.suppress(IntegrityError), self.session() as s:
                s.add(StudyRow(name=study.name, config=study.model_dump_json(), config_hash=study.hash,
                               commit=kdbench_commit(), data_fingerprint=data, uid=secrets.token_hex(16)))
            row = self.check_study(study, data)  # ours, or one another worker registered first
            assert row is not None
        if row.data_fingerprint is None and data is not None:
            with self.session() as s:
                s.execute(sa.update(StudyRow).where(StudyRow.id == row.id, StudyRow.data_fingerprint.is_(None))
                          .values(data_fingerprint=data))
            row.data_fingerprint = data
        if row.uid is None:  # a row stored before uids: it takes one on (or the one another worker gave it first)
            with self.session() as s:
                s.execute(sa.update(StudyRow).where(StudyRow.id == row.id, StudyRow.uid.is_(None))
                          .values(uid=secrets.token_hex(16)))
            row = self.check_study(study, data)
            assert row is not None
        return row

    def set_study_teacher(self, study_id: int, teacher_key: str) -> None:
        """Record which cached teacher the study distils from."""
        with self.session() as s:
            s.execute(sa.update(StudyRow).where(StudyRow.id == study_id).values(teacher_key=teacher_key))

    def record_teacher(self, **fields: Any) -> None:
        """Add a teacher row (the columns of ``kdbench_teachers``) unless its key is already recorded."""
        with contextlib.suppress(IntegrityError), self.session() as s:
            if s.scalar(sa.select(TeacherRow.id).where(TeacherRow.key == fields["key"])) is None:
                s.add(TeacherRow(**fields))

    def set_teacher_logits(self, key: str, test_logits: bytes) -> None:
        """Add the test logits to a teacher row recorded before the store kept them."""
        with self.session() as s:
            s.execute(sa.update(TeacherRow).where(TeacherRow.key == key, TeacherRow.test_logits.is_(None))
                      .values(test_logits=test_logits))

    def drop_study(self, name: str) -> None:
        """Delete a study's kdbench rows and every Optuna study it owns (:func:`kdbench.config.optuna_study_names`:
        CE's and every method's, whatever the stored study's methods were)."""
        import optuna

        self.ensure_tables()

        with self.session() as s:
            row = s.scalar(sa.select(StudyRow).where(StudyRow.name == name))
            if row is not None:
                ids = sa.select(RunRow.id).where(RunRow.study_id == row.id)
                s.execute(sa.delete(EpochRow).where(EpochRow.run_id.in_(ids)))
                s.execute(sa.delete(RunRow).where(RunRow.study_id == row.id))
                s.delete(row)
        from kdbench.config import optuna_study_names

        for oname in optuna_study_names(name):
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=oname, storage=self.optuna_storage())

    def claim(self, study_id: int, visit: VisitLike, index: int, config_hash: str,
              stale_after_s: float, study_uid: str | None = None) -> Claimed | None:
        """Claim ``visit`` for this worker, in one transaction; a retired attempt's Optuna trial is then failed.

        See :meth:`_claim_row` (the transaction) for what is claimed and what is refused.
        """
        with held_signals():  # a signal landing between the claim and the retired trial's close waits for the close
            claimed = self._claim_row(study_id, visit, index, config_hash, stale_after_s, study_uid)
            if claimed is not None and claimed.replaced_trial is not None:  # after the commit: the retire is final
                close_trial(self.optuna_storage(), claimed.replaced_trial, "failed", claimed.replaced_reason)
        return claimed

    def interrupt_claims(self, run_ids: Iterable[int], reason: str) -> int:
        """Record as interrupted each of ``run_ids`` that this worker still holds running (a claim whose trial
        never began, a signal having stopped the worker first), and fail the Optuna trials they link; returns how
        many. Runs recorded meanwhile, or taken over, are left as they are."""
        ids = list(run_ids)
        if not ids:
            return 0
        mine = sa.and_(RunRow.id.in_(ids), RunRow.state == "running", RunRow.owner == worker_id())
        with held_signals():
            with self.session() as s:
                trials = [t for t in s.scalars(sa.select(RunRow.trial_id).where(mine)).all() if t is not None]
                n = s.execute(sa.update(RunRow).where(mine).values(  # type: ignore[attr-defined]
                    state="interrupted", error=reason, finished=now())).rowcount
            for trial_id in trials:
                close_trial(self.optuna_storage(), trial_id, "interrupted", reason)
        return int(n)

    def _claim_row(self, study_id: int, visit: VisitLike, index: int, config_hash: str,
                   stale_after_s: float, study_uid: str | None) -> Claimed | None:
        """Claim ``visit`` for this worker, in one transaction.

        A visit nobody ran gets a new row. A visit whose worker died (dead PID on this host, or no heartbeat
        for ``stale_after_s``) or was interrupted keeps its row as a retired attempt (visit ``key#attempt``,
        state ``failed`` with the reason, or ``interrupted``) and gets a new row. The unique (study, visit)
        constraint and a conditional update make sure only one worker wins.

        ``study_uid`` (the study row's uid, an identity never reused) is checked in the same transaction: a study
        dropped by another process's ``--replace`` is never written into, even when the new one has its id.

        Returns:
            The claim, or None if the visit is final or a live worker holds it.

        Raises:
            StoreError: the study this worker holds was dropped or replaced.
        """
        fields = dict(kind=visit.stage, loss=visit.loss, seed=visit.seed, temperature=visit.temperature,
                      alpha=visit.alpha, lr=visit.lr, rank=visit.rank, config_hash=config_hash,
                      params=params_json(dict(visit.params)), budget=visit.budget_label)

        def new_row(attempt: int) -> RunRow:
            return RunRow(study_id=study_id, visit=visit.key, state="running", owner=worker_id(), heartbeat=now(),
                          started=now(), attempt=attempt, **fields)

        try:
            with self.session() as s:
                if study_uid is not None and s.scalar(sa.select(StudyRow.id).where(
                        StudyRow.id == study_id, StudyRow.uid == study_uid)) is None:
                    raise StoreError(f"study id {study_id} in {self.url} was dropped or replaced by another process "
                                     "(kdbench sweep --replace); this worker stops")
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
                    .values(visit=retired_key(visit.key, run.attempt), error=reason, finished=run.finished or now(),
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

    def update_run(self, run_id: int, **values: Any) -> None:
        """Set columns of this worker's running run (its Optuna link, parameters, progress, heartbeat).

        Raises:
            RetiredAttemptError: the run is no longer this worker's running attempt (another worker took the
                visit over after a missed heartbeat): nothing is written.
        """
        with self.session() as s:
            self._own_running(s, run_id, values)

    def finish_run(self, run_id: int, epochs: Iterable[EpochLike], *, state: str, **values: Any) -> None:
        """Write a run's final state, its results and its epochs in one transaction: never half a run; then
        close its Optuna trial from what was written (the one place a run's trial is closed).

        ``values`` may carry the run's Optuna link (``trial_id``): a worker that asked Optuna but was stopped
        before its first write still has its trial closed here.

        Raises:
            RetiredAttemptError: the run is no longer this worker's running attempt: nothing is written, and
                its trial (the worker that took the visit over failed it already) is failed.
        """
        records = list(epochs)
        trial_id = values.get("trial_id")
        with held_signals():  # a SIGTERM or Ctrl-C landing between the two writes waits for the second
            try:
                with self.session() as s:
                    done = records[-1].epoch + 1 if records else 0  # several points per epoch with eval_every
                    self._own_running(s, run_id, dict(epochs_done=done, state=state, **values))
                    s.add_all(EpochRow(run_id=run_id, epoch=r.point, steps=r.steps,
                                       train_loss=finite_or_none(r.train_loss),
                                       val_acc=finite_or_none(r.val_acc), val_loss=finite_or_none(r.val_loss),
                                       seconds=r.seconds, lr=r.lr) for r in records)
                    trial_id = s.scalar(sa.select(RunRow.trial_id).where(RunRow.id == run_id))
            except RetiredAttemptError as exc:
                if trial_id is not None:
                    close_trial(self.optuna_storage(), trial_id, "failed", str(exc))
                raise
            if trial_id is not None:
                close_trial(self.optuna_storage(), trial_id, state, values.get("error"), values.get("val_acc"))

    @staticmethod
    def _own_running(s: Any, run_id: int, values: dict[str, Any]) -> None:
        """Update run ``run_id`` only while it is running and owned by this worker (a conditional update,
        inside the caller's transaction): a worker whose attempt was retired cannot write into it."""
        done = s.execute(sa.update(RunRow).where(RunRow.id == run_id, RunRow.state == "running",
                                                 RunRow.owner == worker_id()).values(**values)).rowcount
        if done != 1:
            raise RetiredAttemptError(f"run {run_id} was taken over by another worker (this one missed its "
                                      "heartbeat): this attempt's writes are refused and its trial is dropped")

    @contextlib.contextmanager
    def heartbeat(self, run_id: int, every_s: float = HEARTBEAT_S) -> Iterator[None]:
        """Refresh the run's heartbeat every ``every_s`` seconds from a background thread while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                try:
                    self.update_run(run_id, heartbeat=now())
                except RetiredAttemptError:  # taken over: the trial's next write says so and stops it
                    return
                except Exception:  # a missed heartbeat is not fatal; the next one retries
                    log.debug("heartbeat failed", exc_info=True)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
