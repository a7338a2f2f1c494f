"""The Optuna side of a sweep: sampler, pruner, asking for a trial, closing it, repairing after a crash.

Every search visit is one Optuna trial (KD trials in the study ``<name>``, CE trials in ``<name>.ce``, CE with
label smoothing's in ``<name>.ce_ls``, another method's in ``<name>.<method>``), in the same database as kdbench's
tables. A grid visit fixes every parameter (one insert); otherwise the visit's fixed ones go through
``PartialFixedSampler`` while the sampler draws lr, so Optuna's own tools (``optuna trials``,
optuna-dashboard) see the study as it is. kdbench's run rows are the record; Optuna's trial states
follow them (:func:`kdbench.store.trials.close_trial`, called where a run is finished, and :func:`repair`).
"""

from __future__ import annotations

import datetime as dt
import warnings

import optuna

from kdbench.config import Range, Study, optuna_study_name, optuna_study_names
from kdbench.defaults import SAMPLER_STARTUP_TRIALS
from kdbench.store import Store, pid_alive, worker_id
from kdbench.store.trials import close_trial
from kdbench.sweep.plan import Visit

__all__ = ["ask", "close_trial", "open_study", "repair", "report_epoch"]



def _spaces(study: Study, loss: str) -> dict[str, list[float] | Range]:
    """What a search visit of ``loss`` searches: its method's space and lr (CE: lr only; CE with label smoothing:
    its epsilons and lr)."""
    if loss in ("ce", "ce_ls"):
        eps = study.baseline.label_smoothing
        return ({"label_smoothing": eps} if loss == "ce_ls" else {}) | {"lr": study.search.lr}
    return study.search.space(loss) | {"lr": study.search.lr}


def _known(visit: Visit) -> dict[str, float]:
    """The parameters a visit fixes (a grid visit fixes all of them)."""
    values = {"temperature": visit.temperature, "alpha": visit.alpha, "lr": visit.lr} | dict(visit.params)
    return {k: float(v) for k, v in values.items() if v is not None}


def _sampler(study: Study, index: int) -> optuna.samplers.BaseSampler:
    seed = (study.seed * 1_000_003 + index) % (2**31)
    if study.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=SAMPLER_STARTUP_TRIALS)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(study: Study, epochs: int) -> optuna.pruners.BasePruner:
    """The study's pruner over ``epochs`` reports per trial (kdbench never lets it act on the last one)."""
    name = study.search.pruner_name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=SAMPLER_STARTUP_TRIALS, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    return optuna.pruners.NopPruner()


def _suggest(trial: optuna.Trial, name: str, space: list[float] | Range) -> float:
    """A range is sampled as a float; a list is a grid of its own values (a categorical: never in between)."""
    if isinstance(space, Range):
        return trial.suggest_float(name, space.low, space.high, log=space.log)
    return float(trial.suggest_categorical(name, sorted(float(x) for x in space)))


def _distribution(space: list[float] | Range) -> optuna.distributions.BaseDistribution:
    """What :func:`_suggest` would record for ``space``."""
    if isinstance(space, Range):
        return optuna.distributions.FloatDistribution(space.low, space.high, log=space.log)
    return optuna.distributions.CategoricalDistribution(sorted(float(x) for x in space))


def _fixed_trial(ostudy: optuna.Study, study: Study, visit: Visit, attrs: dict[str, str | None]) -> optuna.Trial | None:
    """A trial for a visit that fixes every parameter, written in one insert (parameters and attributes
    together), or None when the sampler must draw one (a range)."""
    spaces = _spaces(study, visit.loss)
    values = _known(visit)
    if any(k not in values or isinstance(v, Range) for k, v in spaces.items()):
        return None
    template = optuna.trial.FrozenTrial(
        number=-1, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=dt.datetime.now(),
        datetime_complete=None, params={k: float(values[k]) for k in spaces},
        distributions={k: _distribution(v) for k, v in spaces.items()}, user_attrs=attrs, system_attrs={},
        intermediate_values={}, trial_id=-1)
    trial_id = ostudy._storage.create_new_trial(ostudy._study_id, template_trial=template)
    return optuna.Trial(ostudy, trial_id)


def open_study(storage: optuna.storages.BaseStorage, study: Study, loss: str, epochs: int,
               cache: dict[str, optuna.Study] | None = None) -> optuna.Study:
    """The Optuna study of one loss (created on first use), kept in ``cache`` for this worker's later trials."""
    name = optuna_study_name(study.name, loss)
    if cache is not None and name in cache:
        return cache[name]
    ostudy = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                 pruner=_pruner(study, epochs))
    if cache is not None:
        cache[name] = ostudy
    return ostudy


def ask(storage: optuna.storages.BaseStorage, study: Study, visit: Visit, index: int,
        epochs: int, cache: dict[str, optuna.Study] | None = None
        ) -> tuple[optuna.Study, optuna.Trial, dict[str, float]]:
    """A new Optuna trial for a search visit, and its parameters (the visit's fixed ones, the sampler's draws).

    A visit that fixes every parameter (a grid) is written in one insert with its attributes. Otherwise the
    trial carries the worker id first, so that it stays traceable if what follows is cut off; a Ctrl-C before
    the parameters are drawn fails the trial.

    Args:
        cache: Optuna study objects by name, kept between the calls of one worker (saves a lookup per trial).
    """
    ostudy = open_study(storage, study, visit.loss, epochs, cache)
    attrs = {"worker": worker_id(), "visit": visit.key, "config_hash": study.hash, "budget": visit.budget_label}
    trial = _fixed_trial(ostudy, study, visit, attrs)
    if trial is not None:  # the visit's own values, as Optuna recorded them: no read back from the storage
        fixed = _known(visit)
        return ostudy, trial, {k: fixed[k] for k in _spaces(study, visit.loss)}
    fixed = _known(visit)
    with warnings.catch_warnings():  # PartialFixedSampler is marked experimental; its interface is all we use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ostudy.sampler = optuna.samplers.PartialFixedSampler(fixed, _sampler(study, index))
    trial = ostudy.ask()
    try:
        trial.set_user_attr("worker", attrs["worker"])
        params = {name: _suggest(trial, name, space) for name, space in _spaces(study, visit.loss).items()}
        trial.set_user_attr("visit", visit.key)
        trial.set_user_attr("config_hash", study.hash)
        trial.set_user_attr("budget", visit.budget_label)
    except BaseException as exc:  # Ctrl-C right after the ask: no run will point to this trial
        close_trial(storage, trial._trial_id, "interrupted", f"{type(exc).__name__} while asking Optuna")
        raise
    return ostudy, trial, params


def report_epoch(trial: optuna.Trial, value: float, epoch: int, epochs: int) -> bool:
    """Report one epoch's validation accuracy to Optuna; True when the pruner stops the trial. With
    ``student.eval_every`` an "epoch" here is an evaluation point (its number, and the run's count of them).

    Never at the last epoch: a trial that finished is a result, whatever the pruner thinks of it (Optuna's
    median pruner compares it with the median of earlier trials, and would otherwise blank finished cells).
    """
    trial.report(value, epoch)
    return epoch + 1 < epochs and trial.should_prune()


def repair(store: Store, study: Study, study_id: int, stale_after_s: float) -> None:
    """Bring Optuna's trials in line with kdbench's runs after a crash.

    A run recorded as final whose worker died before telling Optuna gets its state; an Optuna trial
    no run points to (its worker died between asking Optuna and recording the trial) is failed once its
    worker is gone.
    """
    storage = store.optuna_storage()
    rows = store.trial_links(study_id)
    linked = {r.trial_id for r in rows}
    for r in rows:
        if r.state != "running":
            close_trial(storage, r.trial_id, r.state, r.error, r.val_acc)
    for name in optuna_study_names(study.name):
        try:
            sid = storage.get_study_id_from_name(name)
        except KeyError:
            continue
        for t in storage.get_all_trials(sid, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t._trial_id in linked:
                continue
            alive = pid_alive(t.user_attrs.get("worker"))
            age = (dt.datetime.now() - (t.datetime_start or dt.datetime.now())).total_seconds()
            if alive is False or (alive is None and age > stale_after_s):
                close_trial(storage, t._trial_id, "failed",
                            f"orphaned: worker {t.user_attrs.get('worker')} stopped before kdbench recorded it")
