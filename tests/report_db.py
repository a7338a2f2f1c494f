"""Small results databases for the report tests, written through the real store's ORM with known numbers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np

from kdbench.config import parse_study
from kdbench.store import EpochRow, RunRow, Store, StudyRow, TeacherRow

TEST_SIZE = 10_000  # Fashion-MNIST's test split: stored predictions have one entry per test image
KD_TEST = {1: 0.90, 2: 0.91, 3: 0.92, 4: 0.905, 5: 0.915}  # KD finalist test accuracy by seed
CE_TEST = {1: 0.89, 2: 0.895, 3: 0.90, 4: 0.90, 5: 0.90}
CE_VAL = [0.850, 0.870, 0.860]  # CE search trials' validation accuracy
# (T, alpha) -> [(state, val_acc, lr)] of the KD search trials
KD_TRIALS: dict[tuple[float, float], list[tuple[str, float | None, float]]] = {
    (1.0, 0.5): [("complete", 0.880, 1e-3)],
    (2.0, 0.5): [("complete", 0.890, 2e-3), ("complete", 0.875, 5e-4)],
    (4.0, 0.5): [("pruned", 0.84, 1e-3)],
    (1.0, 0.9): [("failed", None, 3e-3)],
    (2.0, 0.9): [("complete", 0.865, 1e-3)],
    # (4.0, 0.9) never run
}
T0 = dt.datetime(2026, 1, 2, 3, 4, 5)


def study_config(name: str, student: str = "mlp-800", eval_every: int | None = None) -> Any:
    every = {} if eval_every is None else {"eval_every": eval_every}
    return parse_study({"name": name, "data": {"dataset": "fashion-mnist"}, "student": {"model": student, **every},
                        "search": {"temperature": [1, 2, 4], "alpha": [0.5, 0.9]},
                        "finalists": {"top_k": 1, "seeds": 5}})


def _predictions(seed: int, accuracy_shift: int) -> bytes:
    rng = np.random.default_rng(seed + 100 * accuracy_shift)
    return rng.integers(0, 10, TEST_SIZE).astype(np.int16).tobytes()


def make_db(url: str, name: str = "known", *, kd_test: dict[int, float] | None = None,
            ce_test: dict[int, float] | None = None, ce_val: list[float] | None = None,
            kd_trials: dict[tuple[float, float], list[tuple[str, float | None, float]]] | None = None,
            teacher: bool = True, device: str = "cpu (test, 1 thread)", student: str = "mlp-800",
            epochs: int = 3, ls_test: dict[int, float] | None = None, eval_every: int | None = None) -> None:
    """Write one study with the given runs (each finalist evaluated after each of ``epochs`` epochs); defaults are
    the module's known numbers (``ls_test``: CE with label smoothing 0.1 finalists too, validation accuracy = test
    accuracy as for the others; ``eval_every``: the study's ``student.eval_every``, each finalist's points then
    that many steps apart)."""
    kd_test = KD_TEST if kd_test is None else kd_test
    ce_test = CE_TEST if ce_test is None else ce_test
    ce_val = CE_VAL if ce_val is None else ce_val
    kd_trials = KD_TRIALS if kd_trials is None else kd_trials
    study = study_config(name, student, eval_every)
    store = Store.open(url)
    common: dict[str, Any] = dict(config_hash=study.hash, device=device, commit="abc123",
                                  versions=json.dumps({"torch": "2.14.1"}), parameters=1000, started=T0, finished=T0)
    key = f"teacher-{name}"
    with store.session() as s:
        s.add(StudyRow(name=name, config=study.model_dump_json(), config_hash=study.hash,
                       teacher_key=key if teacher else None, created=T0, commit="abc123"))
        if teacher:
            s.add(TeacherRow(key=key, model="cnn-m", dataset="fashion-mnist", parameters=5000, val_acc=0.91,
                             test_acc=0.905, train_seconds=10.0, infer_ms_per_batch=12.5, cache_location="/nowhere",
                             device=device, versions="{}", commit="abc123", test_predictions=_predictions(0, 9)))
    with store.session() as s:
        sid = s.query(StudyRow.id).filter(StudyRow.name == name).scalar()
        n = 0
        for i, v in enumerate(ce_val):
            s.add(RunRow(study_id=sid, visit=f"ce/r={i}", kind="ce", loss="ce", optuna_study=f"{name}.ce",
                         trial_number=i, lr=1e-3 * (i + 1), seed=0, state="complete", val_acc=v, **common))
        for (t, a), trials in kd_trials.items():
            for r, (state, val, lr) in enumerate(trials):
                s.add(RunRow(study_id=sid, visit=f"kd/T={t:g}/a={a:g}/r={r}", kind="kd", loss="kd", optuna_study=name,
                             trial_number=n, temperature=t, alpha=a, lr=lr, seed=0, state=state, val_acc=val,
                             epochs_done=2 if state == "pruned" else 0, **common))  # pruned after its 2nd epoch
                n += 1
        for loss, accs in (("kd", kd_test), ("ce", ce_test), ("ce_ls", ls_test or {})):
            for seed, acc in accs.items():
                run = RunRow(study_id=sid, visit=f"final/{loss}/rank=0/seed={seed}", kind="finalist", loss=loss,
                             params='{"label_smoothing": 0.1}' if loss == "ce_ls" else None,
                             rank=0, temperature=2.0 if loss == "kd" else None, alpha=0.5 if loss == "kd" else None,
                             lr=2e-3, seed=seed, state="complete", val_acc=acc, test_acc=acc, infer_ms_per_batch=1.5,
                             test_predictions=_predictions(seed, loss == "kd"), **common)
                s.add(run)
                s.flush()
                for e in range(epochs):
                    s.add(EpochRow(run_id=run.id, epoch=e, train_loss=1.0 / (e + 1), val_acc=acc - 0.01 * (2 - e),
                                   val_loss=0.5, seconds=1.0, lr=2e-3,
                                   steps=None if eval_every is None else eval_every * (e + 1)))


# A replicated grid (the current design): T in {1, 4} x alpha in {0.1, 0.9} and CE, 2 lr, 3 seeds.
# val = 0.80 + cell effect + lr effect + seed effect + a small fixed wiggle, so every statistic is known.
REP_SEEDS = (1000, 1001, 1002)
REP_LRS = (1e-3, 2e-3)
REP_CELL = {(1.0, 0.1): 0.010, (1.0, 0.9): 0.000, (4.0, 0.1): 0.030, (4.0, 0.9): 0.005, None: 0.0}  # None: CE
REP_LR = {1e-3: 0.0, 2e-3: 0.004}
REP_SEED = {1000: 0.0, 1001: -0.006, 1002: 0.003}
REP_WIGGLE = {1000: 0.001, 1001: -0.001, 1002: 0.0}


def rep_val(cell: tuple[float, float] | None, lr: float, seed: int) -> float:
    """The validation accuracy :func:`make_replicated_db` stores for one run."""
    wiggle = REP_WIGGLE[seed] * (1 if cell is None or cell[0] == 1.0 else -1)
    return 0.80 + REP_CELL[cell] + REP_LR[lr] + REP_SEED[seed] + wiggle


def make_replicated_db(url: str, name: str = "rep", *, search: dict[str, Any] | None = None) -> None:
    """A study on the replicated design (no finalists, no teacher); ``search`` overrides the grid for a range
    study, whose runs then spread T and alpha over their ranges (one seed)."""
    raw = {"name": name, "search": {"temperature": [1, 4], "alpha": [0.1, 0.9], "lr": list(REP_LRS),
                                    "replicates": 3, **(search or {})}}
    study = parse_study(raw)
    store = Store.open(url)
    common: dict[str, Any] = dict(config_hash=study.hash, device="cpu", commit="abc123", versions="{}",
                                  parameters=1000, started=T0, finished=T0, state="complete", epochs_done=1)
    with store.session() as s:
        s.add(StudyRow(name=name, config=study.model_dump_json(), config_hash=study.hash, created=T0,
                       commit="abc123"))
    with store.session() as s:
        sid = s.query(StudyRow.id).filter(StudyRow.name == name).scalar()
        if study.search.is_grid:
            for cell in REP_CELL:
                for lr in REP_LRS:
                    for r, seed in enumerate(REP_SEEDS):
                        kind = "ce" if cell is None else "kd"
                        t, a = (None, None) if cell is None else cell
                        key = f"ce/lr={lr:g}/r={r}" if cell is None else f"kd/T={t:g}/a={a:g}/lr={lr:g}/r={r}"
                        s.add(RunRow(study_id=sid, visit=key, kind=kind, loss=kind, temperature=t, alpha=a, lr=lr,
                                     seed=seed, val_acc=rep_val(cell, lr, seed), **common))
            return
        rng = np.random.default_rng(0)
        for r in range(20):
            t, a = float(2 ** rng.uniform(0, 3)), float(rng.uniform(0.1, 0.9))
            s.add(RunRow(study_id=sid, visit=f"kd/r={r}", kind="kd", loss="kd", temperature=t, alpha=a, lr=1e-3,
                         seed=1000, val_acc=0.80 + 0.01 * np.log2(t) - 0.01 * a, trial_number=r, **common))
            s.add(RunRow(study_id=sid, visit=f"ce/r={r}", kind="ce", loss="ce", lr=1e-3 * (1 + r % 3), seed=1000,
                         val_acc=0.80 + 0.001 * (r % 3), trial_number=r, **common))
