"""The lr extension, planned from fixed frames of results: an arm whose best lr is an end of its list gets its
best cell trained at the next lr by the list's own ratio, on the search's seeds, until the best is interior or
search.lr_extend steps are used; every worker plans the same visits from the same runs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kdbench import cli
from kdbench.config import parse_study
from kdbench.studyfile import read_yaml
from kdbench.sweep import plan_search, search_seeds
from kdbench.sweep.extend import lr_status, plan_extension
from kdbench.sweep.plan import Visit, plan_finalists

Acc = Callable[[Visit], float]
STUDY = {"name": "x", "search": {"temperature": [2, 4], "alpha": [0.5], "lr": [2.5e-4, 1e-3, 4e-3],
                                 "replicates": 2}}


def _rows(visits: list[Visit], acc: Acc) -> pd.DataFrame:
    return pd.DataFrame([{"visit": v.key, "kind": v.stage, "state": "complete", "val_acc": acc(v),
                          "temperature": v.temperature, "alpha": v.alpha, "lr": v.lr,
                          "params": json.dumps(dict(v.params)) if v.params else None, "trial_number": 0,
                          "budget": v.budget_label} for v in visits])


def _sweep(study_raw: dict, acc: Acc, overrides: list[str] | None = None) -> tuple[pd.DataFrame, list[list[Visit]]]:
    """Run the search 'by hand' from ``acc``, then the extension step by step as run_sweep does: train what
    plan_extension returns that is new, ask again, until nothing is new."""
    study = parse_study(study_raw, overrides=overrides or [])
    runs = _rows(plan_search(study), acc)
    steps: list[list[Visit]] = []
    while True:
        new = [v for v in plan_extension(study, runs) if v.key not in set(runs["visit"])]
        if not new:
            return runs, steps
        steps.append(new)
        runs = pd.concat([runs, _rows(new, acc)], ignore_index=True)


def _peaked(ce_best: float, kd_best: dict[float, float]) -> Acc:
    """Accuracy falling with the log-distance of lr from an arm's (a cell's) optimum; T = 4 is the better cell;
    replicate 1 is 0.01 lower than replicate 0."""
    def acc(v: Visit) -> float:
        assert v.lr is not None
        best = ce_best if v.loss == "ce" else kd_best[float(v.temperature or 0)]
        base = 0.7 if v.loss == "ce" else 0.75 + 0.02 * (v.temperature == 4.0)
        return base - 0.01 * abs(math.log(v.lr / best)) - 0.01 * int(v.key[-1])
    return acc


def test_lr_beyond_uses_the_lists_own_ratio_at_each_end() -> None:
    s = parse_study(STUDY).search
    assert s.lr_beyond("low", 1) == pytest.approx(6.25e-5) and s.lr_beyond("high", 1) == pytest.approx(1.6e-2)
    assert s.lr_beyond("high", 2) == pytest.approx(6.4e-2) and s.lr_beyond("low", 2) == pytest.approx(2.5e-4 / 16)
    uneven = parse_study({"name": "u", "search": {"lr": [1e-3, 2e-3, 5e-3]}}).search  # ratio 2 below, 2.5 above
    assert uneven.lr_beyond("low", 1) == pytest.approx(5e-4) and uneven.lr_beyond("high", 1) == pytest.approx(1.25e-2)
    assert parse_study({"name": "one", "search": {"lr": [1e-3]}}).search.lr_beyond("high", 1) is None
    assert parse_study({"name": "r", "search": {"temperature": {"low": 1, "high": 8}}}).search.lr_beyond("low", 1) \
        is None


def test_an_end_is_extended_on_the_search_seeds_until_interior_or_the_limit() -> None:
    """CE's optimum (1) lies far above the list: two steps up (1.6e-2, 6.4e-2), then the limit. KD's best cell
    (T = 4) peaks at 1.5e-4, below the list: one step down (6.25e-5) makes 2.5e-4 interior. T = 2 is not extended."""
    runs, steps = _sweep(STUDY, _peaked(1.0, {2.0: 1e-3, 4.0: 1.5e-4}))
    assert [sorted(v.key for v in step) for step in steps] == [
        ["ce/lr=0.016/r=0", "ce/lr=0.016/r=1", "kd/T=4/a=0.5/lr=6.25e-05/r=0", "kd/T=4/a=0.5/lr=6.25e-05/r=1"],
        ["ce/lr=0.064/r=0", "ce/lr=0.064/r=1"]]
    study = parse_study(STUDY)
    ext = [v for step in steps for v in step]
    assert all(v.extension and v.is_search and not v.asks_optuna for v in ext)
    assert {v.seed for v in ext} == set(search_seeds(study))  # the same replicate seeds as the search
    assert {v.budget_label for v in ext} == {study.selection_budget.label}
    status = {a.arm: a for a in lr_status(study, runs)}
    ce, kd = status["ce"], status["kd"]
    assert (ce.end, ce.above, ce.below, ce.note, ce.best_lr) == ("high", 2, 0, "limit", pytest.approx(6.4e-2))
    assert ce.lrs == pytest.approx((2.5e-4, 1e-3, 4e-3, 1.6e-2, 6.4e-2))
    assert (kd.end, kd.below, kd.above, kd.note, kd.best_lr) == (None, 1, 0, "", 2.5e-4)
    assert kd.values == (("alpha", 0.5), ("temperature", 4.0))
    # the finalists are chosen after the extension, on its results
    finals = {v.loss: v for v in plan_finalists(study, runs) if v.seed == study.seed + 1}
    assert finals["ce"].lr == pytest.approx(6.4e-2) and (finals["kd"].temperature, finals["kd"].lr) == (4.0, 2.5e-4)
    # a budget axis: extended at the selection budget (the largest), where the finalists are chosen
    _, steps = _sweep(STUDY, _peaked(1.0, {2.0: 1e-3, 4.0: 1.5e-4}), ["search.budget=[1, 3]"])
    assert [len(step) for step in steps] == [4, 2] and all("/e=3/r=" in v.key for step in steps for v in step)


def test_a_step_waits_for_every_visit_it_rests_on_and_is_planned_alike_by_every_worker() -> None:
    study = parse_study(STUDY)
    acc = _peaked(1.0, {2.0: 1e-3, 4.0: 1e-3})
    search = _rows(plan_search(study), acc)
    running = search.copy()
    running.loc[running["visit"] == "ce/lr=0.001/r=1", "state"] = "running"
    assert plan_extension(study, running) == []  # CE's search is not final yet: nothing for CE
    first = plan_extension(study, search)
    assert [v.key for v in first] == ["ce/lr=0.016/r=0", "ce/lr=0.016/r=1"]
    assert plan_extension(study, search.sample(frac=1.0, random_state=3)) == first  # any row order: the same plan
    half = pd.concat([search, _rows(first[:1], acc)], ignore_index=True)
    assert plan_extension(study, half) == first  # step 2 waits for all of step 1
    assert {a.arm: a.note for a in lr_status(study, half)} == {"ce": "pending", "kd": ""}


def test_interior_optima_limit_zero_one_candidate_and_stored_finalists_are_not_extended() -> None:
    interior = _peaked(1e-3, {2.0: 1e-3, 4.0: 1e-3})
    runs, steps = _sweep(STUDY, interior)
    assert steps == [] and {(a.arm, a.end, a.note) for a in lr_status(parse_study(STUDY), runs)} == {
        ("ce", None, ""), ("kd", None, "")}
    high = _peaked(1.0, {2.0: 1.0, 4.0: 1.0})
    runs, steps = _sweep(STUDY, high, ["search.lr_extend=0"])
    assert steps == []
    assert {(a.arm, a.end, a.note) for a in lr_status(parse_study(STUDY, overrides=["search.lr_extend=0"]), runs)} \
        == {("ce", "high", "limit"), ("kd", "high", "limit")}
    one = {"name": "one", "search": {"temperature": [2, 4], "alpha": [0.5], "lr": [1e-3], "replicates": 2}}
    runs, steps = _sweep(one, high)
    assert steps == [] and {a.note for a in lr_status(parse_study(one), runs)} == {"single"}
    # finalists stored before kdbench extended lrs: the study is reported, not extended under them
    study = parse_study(STUDY)
    stored = _rows(plan_search(study) + plan_finalists(study, _rows(plan_search(study), high)), high)
    assert plan_extension(study, stored) == []
    assert {(a.arm, a.end, a.note) for a in lr_status(study, stored)} == {("ce", "high", "stored"),
                                                                           ("kd", "high", "stored")}


def test_a_range_search_is_checked_against_the_ranges_ends_not_extended() -> None:
    raw = {"name": "r", "search": {"temperature": {"low": 1, "high": 8}, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                   "trials": 3}}
    study = parse_study(raw)
    lrs = {"ce": [1.2e-4, 5e-4, 1e-3], "kd": [9e-3, 1e-3, 5e-3]}  # the first trial of each is its best
    rows = [{"visit": v.key, "kind": v.stage, "state": "complete", "val_acc": 0.9 - 0.1 * int(v.key[-1]),
             "temperature": 2.0 if v.stage == "kd" else None, "alpha": 0.5 if v.stage == "kd" else None,
             "lr": lrs[v.stage][int(v.key[-1])], "params": None, "trial_number": int(v.key[-1])}
            for v in plan_search(study)]
    runs = pd.DataFrame(rows)
    assert plan_extension(study, runs) == []
    status = {a.arm: a for a in lr_status(study, runs)}
    # log10 share of the range: ce (log 1.2e-4 - log 1e-4) / 2 = 0.04 (low end); kd 0.98 (high end)
    assert (status["ce"].end, status["ce"].note) == ("low", "range")
    assert (status["kd"].end, status["kd"].note, status["kd"].lrs) == ("high", "range", (1e-4, 1e-2))
    rows[0]["lr"] = 1.25e-4  # share 0.048: still the outer tenth; 2e-4 (0.15) is interior
    assert {a.arm: a.end for a in lr_status(study, pd.DataFrame(rows))}["ce"] == "low"
    rows[0]["lr"] = 2e-4
    assert {a.arm: a.end for a in lr_status(study, pd.DataFrame(rows))}["ce"] is None


def test_lr_extend_leaves_stored_hashes_alone_and_bad_values_name_the_key(tmp_path: Path) -> None:
    quick = read_yaml((Path(__file__).parent.parent / "studies" / "fashion-mnist-quick.yaml").read_text())
    quick["baseline"].pop("label_smoothing")  # without CE with label smoothing (hash of its 9-cell grid, 2026-12-08)
    assert parse_study(quick).hash == "1ac445e2818d0883"
    assert parse_study(quick, overrides=["search.lr_extend=2"]).hash == "1ac445e2818d0883"
    assert parse_study(quick, overrides=["search.lr_extend=0"]).hash != "1ac445e2818d0883"
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsearch: {lr_extend: -1}\n")
    res = CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", f"sqlite:///{tmp_path / 'kd.db'}"])
    assert res.exit_code == 2 and "search.lr_extend" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "kd.db").exists()


@pytest.mark.slow
def test_two_workers_extend_an_under_tuned_arm_once_and_the_verdict_says_so(small_study_dict: dict,
                                                                             tmp_path: Path) -> None:
    """Through the CLI with --workers 2: lrs far too small for 100 steps ([1e-6, 3e-6]) put every arm's best at
    the top end; each arm's best cell is trained at 9e-6 and 2.7e-5 on both search seeds, exactly once, then the
    limit (lr_extend 2) is reached; the finalists take the extended lr, and show and the report's verdict name
    the arms that hit the limit."""
    import subprocess
    import sys

    import yaml

    from kdbench.store import Store
    from kdbench.sweep import study_progress

    # the small study's 2,000 rows: 200 validation images, evaluated after each of the ~10 epochs of every visit;
    # an mlp-800 teacher: a fraction of cnn-s's CPU time to train and to cache its logits
    raw = dict(small_study_dict, teacher=dict(small_study_dict["teacher"], model="mlp-800"),
               student={"model": "mlp-800", "steps": 100, "batch_size": 64},
               search={"temperature": [2], "alpha": [0.5], "lr": [1e-6, 3e-6], "replicates": 2},
               finalists={"top_k": 1, "seeds": 1})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    db = f"sqlite:///{tmp_path / 'kd.db'}"
    done = subprocess.run([sys.executable, "-m", "kdbench", "sweep", str(tmp_path / "study.yaml"), "--storage", db,
                           "--device", "cpu", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--quiet",
                           "--workers", "2"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    runs = Store.open(db).runs("tiny")
    assert runs["visit"].is_unique and "#" not in "".join(runs["visit"]) and set(runs["state"]) == {"complete"}
    assert len(runs) == 8 + 8 + 2  # the search (2 arms x 2 lr x 2 seeds), the extension (2 arms x 2 lr x 2), finalists
    study = parse_study(raw)
    search = {v.key for v in plan_search(study)}
    ext = runs[~runs["visit"].isin(search) & (runs["kind"] != "finalist")]
    assert sorted(ext["visit"]) == sorted(f"{arm}/lr={lr}/r={r}" for arm in ("ce", "kd/T=2/a=0.5")
                                          for lr in ("2.7e-05", "9e-06") for r in (0, 1))
    assert sorted(ext["lr"].round(12).unique()) == [9e-6, 2.7e-5]  # the store holds the real lr
    assert set(ext["seed"]) == set(search_seeds(study)) and ext["trial_number"].isna().all()  # no Optuna trial
    fin = runs[runs["kind"] == "finalist"]
    assert fin["lr"].round(12).tolist() == [2.7e-5, 2.7e-5]  # chosen after the extension
    progress = study_progress(Store.open(db), study)
    assert (progress.done, progress.total) == (18, 18)  # planned 10, and the extension's 8 once stored
    shown = CliRunner().invoke(cli.main, ["show", "tiny", "--storage", db])
    assert shown.exit_code == 0, shown.output
    assert "Not every arm tuned to an interior lr" in shown.output and "CE's best lr (2.7e-05) is the highest" \
        in shown.output, shown.output
    out = tmp_path / "report"
    rep = CliRunner().invoke(cli.main, ["report", "tiny", "--storage", db, "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    verdict = next(line for line in rep.output.splitlines() if line.startswith("tiny: "))
    assert "Not every arm tuned to an interior lr" in verdict and "CE and KD" in verdict, verdict
    assert "under-tuning" in verdict and "widened CE's lr list by 2 (0 below, 2 above)" in verdict, verdict
    assert "Tuning was equal per cell (KD: 1 cells × 2 lr × 2 seeds; CE: 2 lr × 2 seeds)" in verdict, verdict
    assert "2.7e-05" in (out / "index.html").read_text()  # the grid's lr axis holds the extended values


def test_another_methods_best_cell_is_extended_with_all_its_parameters() -> None:
    raw = {"name": "m", "search": {"method": ["kd", "dkd"], "temperature": [2, 4], "alpha": [0.5], "lr": [1e-3, 3e-3],
                                   "replicates": 2, "spaces": {"dkd": {"temperature": [2, 4]}}}}
    runs, steps = _sweep(raw, lambda v: 0.5 + 10 * (v.lr or 0) + 0.01 * (v.temperature or 0))  # more lr is better
    dkd = [v for v in steps[0] if v.loss == "dkd"]
    assert [v.key for v in dkd] == [f"dkd/T=4/ce_weight=1/kd_weight=1/nckd_weight=8/tckd_weight=1/lr=0.009/r={r}"
                                    for r in (0, 1)]
    assert dkd[0].lr == 0.009 and dict(dkd[0].params)["nckd_weight"] == 8.0 and dkd[0].temperature == 4.0
    assert [len(s) for s in steps] == [6, 6]  # CE, KD's and DKD's best cells, twice, then the limit
    status = {a.arm: (a.end, a.above, a.note) for a in lr_status(parse_study(raw), runs)}
    assert status == {"ce": ("high", 2, "limit"), "kd": ("high", 2, "limit"), "dkd": ("high", 2, "limit")}
