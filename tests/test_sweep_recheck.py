"""The finalists' lr re-check: each finalist configuration at its lr and the lrs beside it, at the finalists' budget,
on the finalist seeds and validation only; its finalists take the best, CE and KD alike."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from kdbench.config import parse_study
from kdbench.errors import ConfigError
from kdbench.report.grid import recheck_sentence
from kdbench.sweep import plan_search, planned_total
from kdbench.sweep.recheck import plan_recheck, recheck_status, rechecked_finalists

RAW = {"name": "rc", "student": {"epochs": 1},
       "search": {"temperature": [2, 4], "alpha": [0.5], "lr": [1e-3, 2e-3, 4e-3], "replicates": 2},
       "finalists": {"seeds": 2, "budget": 5, "lr_recheck": True}}


def _search_rows(study) -> list[dict]:
    """KD T=2 best at 1e-3 (the lowest lr), CE best at 2e-3 (interior): the search's choices."""
    rows = []
    for v in plan_search(study):
        best = 1e-3 if v.stage == "kd" else 2e-3
        acc = (0.80 if v.temperature == 2 else 0.70) if v.stage == "kd" else 0.75
        rows.append({"visit": v.key, "kind": v.stage, "state": "complete", "temperature": v.temperature,
                     "alpha": v.alpha, "lr": v.lr, "params": json.dumps(dict(v.params)) if v.params else None,
                     "trial_number": 0, "seed": v.seed, "budget": v.budget_label,
                     "val_acc": acc + (0.01 if v.lr == best else 0.0)})
    return rows


def test_each_finalist_configuration_is_rechecked_beside_its_lr_at_the_finalists_budget() -> None:
    study = parse_study(RAW)
    runs = pd.DataFrame(_search_rows(study))
    visits = plan_recheck(study, runs)
    assert len({v.key for v in visits}) == len(visits) == 2 * 3 * 2  # (KD, CE) x 3 lrs x 2 finalist seeds
    assert planned_total(study) == len(plan_search(study)) + len(visits) + 2 * 2
    assert {v.stage for v in visits} == {"recheck"} and not any(v.is_search for v in visits)
    assert {v.budget_label for v in visits} == {"5 epochs"} and {v.seed for v in visits} == {1, 2}
    lrs = {loss: sorted({v.lr for v in visits if v.loss == loss}) for loss in ("kd", "ce")}
    assert lrs["ce"] == [1e-3, 2e-3, 4e-3]  # interior: its neighbours in the list
    assert lrs["kd"] == [5e-4, 1e-3, 2e-3]  # the lowest: the list's ratio below it
    assert {v.temperature for v in visits if v.loss == "kd"} == {2.0}
    assert "recheck/kd/T=2/a=0.5/lr=0.0005/seed=1" in {v.key for v in visits}
    # the finalists wait for nothing here: before the re-check is complete they keep the search's lr
    assert {(v.loss, v.lr) for v in rechecked_finalists(study, runs)} == {("kd", 1e-3), ("ce", 2e-3)}


def test_past_the_lr_extension_the_recheck_steps_on_as_the_extension_does() -> None:
    """KD's best lr moves down the two steps search.lr_extend allows (5e-4, then 2.5e-4, each better): its
    re-check takes the cell's lr above and the extension's next step below (SearchConfig.lr_beyond: 1.25e-4)."""
    from kdbench.sweep.extend import plan_extension

    study = parse_study(RAW)
    rows = _search_rows(study)
    for acc in (0.82, 0.83):
        for v in plan_extension(study, rows):
            if v.key not in {r["visit"] for r in rows}:
                rows.append({"visit": v.key, "kind": v.stage, "state": "complete", "temperature": v.temperature,
                             "alpha": v.alpha, "lr": v.lr, "params": None, "trial_number": None, "seed": v.seed,
                             "budget": v.budget_label, "val_acc": acc})
    kd = sorted({r["lr"] for r in rows if r["kind"] == "kd" and r["temperature"] == 2})
    assert kd == [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3]
    assert {v.key for v in plan_extension(study, rows)} <= {r["visit"] for r in rows}  # the extension is final
    lrs = sorted({v.lr for v in plan_recheck(study, rows) if v.loss == "kd"})
    assert lrs == [study.search.lr_beyond("low", 3), 2.5e-4, 5e-4] == [1.25e-4, 2.5e-4, 5e-4]


def test_the_finalists_take_the_best_rechecked_lr_on_validation_and_the_search_lr_on_a_tie() -> None:
    study = parse_study(RAW)
    rows = _search_rows(study)
    val = {("ce", 4e-3): [0.90, 0.88], ("ce", 2e-3): [0.85, 0.86]}  # CE: 4e-3 better at 5 epochs (0.89 > 0.855)
    for v in plan_recheck(study, pd.DataFrame(rows)):
        acc = val.get((v.loss, v.lr), [0.80, 0.80])[v.seed - 1]  # KD: all equal, a tie
        rows.append({"visit": v.key, "kind": "recheck", "state": "complete", "temperature": v.temperature,
                     "alpha": v.alpha, "lr": v.lr, "params": None, "trial_number": None, "seed": v.seed,
                     "budget": v.budget_label, "val_acc": acc})
    runs = pd.DataFrame(rows)
    finalists = rechecked_finalists(study, runs)
    assert {(v.loss, v.lr) for v in finalists} == {("kd", 1e-3), ("ce", 4e-3)} and len(finalists) == 4
    assert {v.key for v in finalists} == {f"final/{m}/rank=0/seed={s}" for m in ("kd", "ce") for s in (1, 2)}
    status = {r.arm: r for r in recheck_status(study, runs)}
    assert status["ce"].means == ((1e-3, 0.80), (2e-3, pytest.approx(0.855)), (4e-3, pytest.approx(0.89)))
    assert status["ce"].n == 2 and status["kd"].best == status["kd"].chosen == 1e-3
    text = recheck_sentence(list(status.values()), "5 epochs")
    assert text == ("lr re-checked at the finalists' budget (5 epochs, mean validation accuracy over n=2 finalist "
                    "seeds, before the test set was read): KD kept 0.001 (0.0005: 80.00 %, 0.001: 80.00 %, 0.002: "
                    "80.00 %); CE moved from 0.002 to 0.004 (0.001: 80.00 %, 0.002: 85.50 %, 0.004: 89.00 %).")
    missing = [r for r in rows if r["visit"] != "recheck/ce/lr=0.004/seed=2"]  # one run short: no move yet
    partial = {r.arm: r for r in recheck_status(study, pd.DataFrame(missing))}["ce"]
    assert partial.best == 2e-3 and partial.n == 1 and not math.isnan(dict(partial.means)[4e-3])


def test_the_recheck_is_off_by_default_out_of_the_hash_and_needs_a_grid() -> None:
    off = {**RAW, "finalists": {"seeds": 2, "budget": 5}}
    study = parse_study(off)
    assert plan_recheck(study, pd.DataFrame(_search_rows(study))) == []
    assert parse_study(off, overrides=["finalists.lr_recheck=false"]).hash == study.hash != parse_study(RAW).hash
    with pytest.raises(ConfigError, match=r"finalists\.lr_recheck needs a grid search") as err:
        parse_study(RAW, "s.yaml", overrides=["search.temperature={low: 1, high: 4}", "search.replicates=1"])
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_recheck_through_the_cli_trains_before_the_finalists_and_the_verdict_says_it(
        needs_fmnist: None, tiny_study_dict: dict, tmp_path) -> None:
    """``finalists.lr_recheck`` on the tiny study: the re-check runs are stored (validation only, at the finalists'
    budget, on the finalist seed), each finalist trains at its arm's best re-checked lr, the verdict says so."""
    from click.testing import CliRunner
    from test_sweep import _sweep_cli

    from kdbench import cli
    from kdbench.store import load_runs

    raw = {**tiny_study_dict, "name": "rc"}
    raw["search"] = {**raw["search"], "lr": [1e-3, 2e-3], "lr_extend": 0}
    raw["finalists"] = {"top_k": 1, "seeds": 1, "budget": {"steps": 20}, "lr_recheck": True}
    url, _, _ = _sweep_cli(raw, tmp_path)
    runs = load_runs(url, "rc")
    study = parse_study(raw)
    assert len(runs) == planned_total(study) == 6 + 2 * 3 + 2 and set(runs["state"]) == {"complete"}
    rc = runs[runs["kind"] == "recheck"]
    assert rc["test_acc"].isna().all() and set(rc["budget"]) == {"20 steps"} and set(rc["seed"]) == {1}
    assert rc["started"].max() <= runs.loc[runs["kind"] == "finalist", "started"].min()  # before the test set
    for r in recheck_status(study, runs):
        final = runs[(runs["kind"] == "finalist") & (runs["loss"] == r.arm)]
        best = max(r.means, key=lambda lm: lm[1])
        assert final["lr"].tolist() == [pytest.approx(r.best)] and dict(r.means)[r.best] == best[1]
    rep = CliRunner().invoke(cli.main, ["report", "rc", "--storage", url, "--out", str(tmp_path / "report")])
    assert rep.exit_code == 0, rep.output
    assert "lr re-checked at the finalists&#39; budget (20 steps" in (tmp_path / "report" / "index.html").read_text()
