"""Every read a report makes, in one place: the store, Optuna, and the dataset's test split.

:func:`read_study` (or :func:`read_studies`, several studies on one store) reads one study and returns
a :class:`StudySources` of plain data: its runs and per-epoch curves, the study row's config (parsed
from its JSON), the teacher it distils from, the finalists' test summary
(:meth:`kdbench.store.Store.finalist_summary`, the one summary kdbench prints everywhere), the stored
test predictions the prediction grid shows with the test split's labels and images, and Optuna's
parameter importances. Nothing here draws or reshapes; :mod:`kdbench.report.frames` computes the
report's tables from what this returns. Nothing here writes either: the store is opened without
creating a database, and Optuna's storage only where Optuna's tables already exist.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from kdbench.config import Study
from kdbench.defaults import IMPORTANCE_MIN_TRIALS, IN_MEMORY_DATASET
from kdbench.errors import DataNotFoundError, KdbenchError, StoreError
from kdbench.report.budget import budget_labels
from kdbench.store import Store, TeacherRow

__all__ = [
    "IMPORTANCE_EVALUATOR",
    "PredictionSources",
    "StoreLike",
    "StudySources",
    "TeacherSource",
    "TestSplit",
    "read_studies",
    "read_study",
]

StoreLike: TypeAlias = str | Store  # an open store, or the URL of one
IMPORTANCE_EVALUATOR = (
    "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, target_quantile=0.1, on complete KD trials; "
    "Optuna 5's default, which replaced fANOVA)"
)


@dataclass
class TeacherSource:
    """The teacher's row as plain values (see :class:`kdbench.store.TeacherRow`)."""

    key: str
    model: str
    parameters: int
    val_acc: float
    test_acc: float
    infer_ms_per_batch: float | None
    device: str
    commit: str
    cache_location: str
    test_predictions: bytes | None  # int16 argmax over the test set
    test_logits: bytes | None = None  # float16 [test, classes]; None when recorded before schema 2
    train_seconds: float | None = None  # its training's wall-clock (None: loaded from a checkpoint)


@dataclass
class TestSplit:
    """The dataset's test split as read: ``labels`` ``int64 [N]``, ``images`` ``uint8 [N, C, H, W]``, class names."""

    labels: npt.NDArray[np.int64]
    images: npt.NDArray[np.uint8]
    classes: list[str]


@dataclass
class PredictionSources:
    """What the prediction grid and the fidelity statistics read: the best KD and CE finalists' stored
    predictions of every seed both have, and the test split.

    Attributes:
        seed: the first seed with both a complete best (rank 0) KD and CE finalist, or None.
        kd: the KD finalist's stored test predictions (int16 argmax) of that seed, None when missing.
        ce: the CE finalist's, likewise.
        classes: the dataset's class names by index (empty for a dataset kdbench does not know).
        load_images: whether the test split was asked for.
        test: the test split, read only when asked for and both predictions are there.
        test_error: why the test split could not be read, or None.
        kd_by_seed: every shared seed's stored KD predictions.
        ce_by_seed: every shared seed's stored CE predictions.
    """

    seed: int | None
    kd: bytes | None
    ce: bytes | None
    classes: list[str]
    load_images: bool
    test: TestSplit | None = None
    test_error: str | None = None
    kd_by_seed: dict[int, bytes] = field(default_factory=dict)  # every shared seed's stored KD predictions
    ce_by_seed: dict[int, bytes] = field(default_factory=dict)  # and CE's (a seed whose blob is missing is absent)


@dataclass
class StudySources:
    """Everything the report of one study reads, as returned by the reads.

    Attributes:
        name: the study's name.
        config: the study's config as stored (its row's JSON, parsed): what the provenance shows.
        study: that config as the typed study (:meth:`kdbench.store.Store.study_config`): what every reader uses.
        config_hash: the config's hash.
        commit: the kdbench commit that created the study.
        created: when the study was created.
        runs: every run (:meth:`kdbench.store.Store.runs`).
        epochs: every run's per-epoch curves (:meth:`kdbench.store.Store.epochs`).
        teacher: the teacher the study distils from, or None before the sweep recorded it.
        finalists: the finalists' test mean, sd and n (:meth:`kdbench.store.Store.finalist_summary`).
        predictions: what the prediction grid shows.
        kd_complete: complete KD search trials (what the importances are computed on).
        importances: Optuna's importance of each parameter, or None when not computed.
        importances_skipped: why they were not computed ("" when they were).
    """

    name: str
    config: dict[str, Any]
    study: Study
    config_hash: str
    commit: str | None
    created: dt.datetime | None
    runs: pd.DataFrame
    epochs: pd.DataFrame
    teacher: TeacherSource | None
    finalists: pd.DataFrame
    predictions: PredictionSources
    kd_complete: int
    importances: dict[str, float] | None
    importances_skipped: str
    logits: dict[str, dict[int, bytes]] = field(default_factory=dict)  # best finalist of each loss: seed -> float16
    temperatures: dict[str, dict[int, float]] = field(default_factory=dict)  # the same runs: T fitted on val
    storage_url: str = ""  # the database, password masked (for the optuna-dashboard command)


def read_study(storage: StoreLike, name: str, *, load_images: bool = True, test: TestSplit | None = None,
               importance_min_trials: int = IMPORTANCE_MIN_TRIALS) -> StudySources:
    """Read everything the report of one study shows.

    Args:
        storage: the open store, or the SQLAlchemy URL of the results database (never created).
        name: the study's name.
        load_images: read the dataset's test split for the prediction grid.
        test: that test split, given (data held in memory, as :func:`kdbench.sweep` takes them) instead of read.
        importance_min_trials: complete KD trials below which importances are not computed.

    Returns:
        The study's sources.

    Raises:
        StoreError: unknown study (the message lists the studies in the database) or unusable database.
    """
    store = Store.get(storage, create=False)
    runs = store.runs(name)  # raises StoreError listing the known studies
    row = store.study(name)
    assert row is not None
    config = store.stored_config(name)  # what the provenance shows, as stored
    study = store.study_config(name)  # what every reader uses; a damaged config: one line naming it
    teacher = _teacher(store.teacher(row.teacher_key)) if row.teacher_key else None
    labels = budget_labels(study)
    at = labels.selection if len(labels.search) > 1 else None  # a budget axis: importances at the selection budget
    kd = (runs["kind"] == "kd") & (runs["state"] == "complete")
    kd_complete = int((kd & (runs["budget"] == at)).sum() if at else kd.sum())
    importances, skipped = _importances(store, name, kd_complete, importance_min_trials, at)
    return StudySources(
        name=name, config=config, study=study, config_hash=row.config_hash, commit=row.commit, created=row.created,
        runs=runs,
        epochs=store.epochs(name), teacher=teacher, finalists=store.finalist_summary(name),
        predictions=_predictions(store, study, runs, load_images, test), kd_complete=kd_complete,
        importances=importances, importances_skipped=skipped, logits=_logits(store, runs),
        temperatures=_temperatures(store, runs), storage_url=store.url)


def _logits(store: Store, runs: pd.DataFrame) -> dict[str, dict[int, bytes]]:
    """The stored test logits of each loss's best finalist (rank 0), by seed (runs without them left out)."""
    best = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete") & (runs["rank"] == 0)]
    blobs = store.test_logits([int(i) for i in best["run_id"]])
    out: dict[str, dict[int, bytes]] = {}
    for _, r in best.iterrows():
        blob = blobs.get(int(r["run_id"]))
        if blob:
            out.setdefault(str(r["loss"]), {})[int(r["seed"])] = blob
    return out


def _temperatures(store: Store, runs: pd.DataFrame) -> dict[str, dict[int, float]]:
    """The calibration temperature (fitted on validation) of each loss's best finalist, by seed, where stored."""
    best = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete") & (runs["rank"] == 0)]
    fitted = store.calib_temperatures([int(i) for i in best["run_id"]])
    out: dict[str, dict[int, float]] = {}
    for _, r in best.iterrows():
        if int(r["run_id"]) in fitted:
            out.setdefault(str(r["loss"]), {})[int(r["seed"])] = fitted[int(r["run_id"])]
    return out


def read_studies(storage: StoreLike, names: list[str], *, load_images: bool = True,
                 tests: dict[str, TestSplit] | None = None) -> list[StudySources]:
    """:func:`read_study` for each of ``names``, on one store opened once.

    Args:
        storage: the open store, or the SQLAlchemy URL of the results database (never created).
        names: the studies' names, in the order returned.
        load_images: read the dataset's test split for each prediction grid.
        tests: test splits given by study name instead of read (see :func:`read_study`).

    Raises:
        StoreError: an unknown study (the message lists the studies in the database) or unusable database.
    """
    store = Store.get(storage, create=False)
    return [read_study(store, name, load_images=load_images, test=(tests or {}).get(name)) for name in names]


def _teacher(row: TeacherRow | None) -> TeacherSource | None:
    if row is None:
        return None
    return TeacherSource(
        key=row.key, model=row.model, parameters=row.parameters, val_acc=row.val_acc, test_acc=row.test_acc,
        infer_ms_per_batch=row.infer_ms_per_batch, device=row.device, commit=row.commit,
        cache_location=row.cache_location, test_predictions=row.test_predictions, test_logits=row.test_logits,
        train_seconds=row.train_seconds)


def _predictions(store: Store, study: Study, runs: pd.DataFrame, load_images: bool,
                 test: TestSplit | None = None) -> PredictionSources:
    """The stored predictions of the first seed with a best KD and CE finalist; the test split when both exist."""
    from kdbench.data import DATASETS

    dataset = study.data.dataset
    classes = list(DATASETS[dataset].classes) if dataset in DATASETS else []
    best = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete") & (runs["rank"] == 0)]
    seeds = sorted(set(best.loc[best["loss"] == "kd", "seed"]) & set(best.loc[best["loss"] == "ce", "seed"]))
    if not seeds:
        return PredictionSources(None, None, None, classes, load_images)
    seed = int(seeds[0])
    run_ids = {(loss, int(sd)): int(best.loc[(best["loss"] == loss) & (best["seed"] == sd), "run_id"].iloc[0])
               for loss in ("kd", "ce") for sd in seeds}
    blobs = store.test_predictions(list(run_ids.values()))
    by_seed: dict[str, dict[int, bytes]] = {"kd": {}, "ce": {}}
    for (loss, sd), run_id in run_ids.items():
        blob = blobs.get(run_id)
        if blob is not None:
            by_seed[loss][sd] = blob
    out = PredictionSources(seed, by_seed["kd"].get(seed), by_seed["ce"].get(seed), classes, load_images,
                            kd_by_seed=by_seed["kd"], ce_by_seed=by_seed["ce"])
    if not load_images or out.kd is None or out.ce is None:
        return out
    if test is not None:
        out.test = test
        return out
    if dataset == IN_MEMORY_DATASET:
        out.test_error = ("its data were given in memory to kdbench.sweep (data=); the SweepResult's report() has "
                          "them")
        return out
    try:
        from kdbench.data import load_study_raw

        info, _, split, _ = load_study_raw(study.data.model_copy(update={"download": False}), study.folder)
    except (DataNotFoundError, KdbenchError) as exc:
        out.test_error = str(exc)
        return out
    if not info.is_image:  # features or token ids: nothing to draw
        out.test_error = f"the inputs are not images ({split.images.dtype} {tuple(info.input_shape or ())} each)"
        return out
    out.test = TestSplit(split.labels.numpy(), split.images.numpy(), list(info.classes))
    return out


def _importances(store: Store, name: str, kd_complete: int, minimum: int,
                 budget: str | None = None) -> tuple[dict[str, float] | None, str]:
    """Optuna's PED-ANOVA importances of the KD study (its trials at ``budget`` only, when given: a budget axis),
    or None and why they were not computed."""
    if kd_complete < minimum:
        return None, (f"not shown: {kd_complete} complete KD trial(s), fewer than the {minimum} "
                      f"PED-ANOVA needs to have at least 5 in the top 10 % it compares with the rest")
    import optuna

    try:
        study = store.optuna_study(name)
    except KeyError as exc:
        return None, f"not shown: Optuna study {name!r} not readable ({str(exc).strip(chr(39))})"
    except StoreError as exc:
        return None, f"not shown: {exc}"
    with warnings.catch_warnings():  # experimental-API and few-trial warnings: the report's note says what matters
        warnings.simplefilter("ignore")
        if budget is not None:  # an in-memory copy holding the trials of one budget (the stored study is untouched)
            trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("budget") == budget]
            level = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
            try:
                study = optuna.create_study(direction=study.direction)
            finally:
                optuna.logging.set_verbosity(level)
            study.add_trials(trials)
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    return {param: float(v) for param, v in imp.items()}, ""
