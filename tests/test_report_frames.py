"""The report's numbers: statistics against hand-computed values, the grid, partial studies, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from report_db import CE_TEST, CE_VAL, KD_TEST, make_db

from kdbench.cli import main
from kdbench.config import is_geometric
from kdbench.errors import StoreError
from kdbench.report.frames import comparison_table, study_frames
from kdbench.report.render import write_report
from kdbench.report.stats import paired_difference, summarize, verdict

T_975_DF4 = 2.7764451051977987  # Student t, 97.5th percentile, 4 degrees of freedom (printed tables)


def _t4_cdf(t: float) -> float:
    """Closed-form CDF of Student's t with 4 degrees of freedom."""
    u = t * t / 4
    return 0.5 + 0.375 * (t / math.sqrt(1 + u)) * (1 - u / (3 * (1 + u)))


def _hand(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@pytest.fixture
def known(db_url: str) -> str:
    make_db(db_url)
    return db_url


def test_t4_cdf_is_right() -> None:
    assert _t4_cdf(0.0) == 0.5 and _t4_cdf(T_975_DF4) == pytest.approx(0.975, abs=1e-9)


def test_comparison_statistics_match_hand_computation(known: str) -> None:
    f = study_frames(known, "known", load_images=False)
    arms = f.arms.set_index("arm")
    for arm, accs in (("KD student", KD_TEST), ("CE student", CE_TEST)):
        mean, sd = _hand(list(accs.values()))
        assert arms.loc[arm, "test_mean"] == pytest.approx(mean, abs=1e-12)
        assert arms.loc[arm, "test_sd"] == pytest.approx(sd, abs=1e-12)
        assert arms.loc[arm, "n"] == 5
    diffs = [KD_TEST[s] - CE_TEST[s] for s in sorted(KD_TEST)]
    d_mean, d_sd = _hand(diffs)
    se = d_sd / math.sqrt(5)
    kd = arms.loc["KD student"]
    assert kd["diff_mean"] == pytest.approx(d_mean, abs=1e-12) == pytest.approx(0.013, abs=1e-12)
    assert kd["ci_low"] == pytest.approx(d_mean - T_975_DF4 * se, abs=1e-9)
    assert kd["ci_high"] == pytest.approx(d_mean + T_975_DF4 * se, abs=1e-9)
    assert kd["p_value"] == pytest.approx(2 * (1 - _t4_cdf(d_mean / se)), rel=1e-6)
    assert kd["n_pairs"] == 5
    assert f.verdict.startswith("KD helped") and "n=5" in f.verdict and "+1.30 pp" in f.verdict
    assert ("Conditions: mlp-800 students trained 3 epochs of batch 128, n=5 shared finalist seeds, teacher cnn-m "
            "at 90.50 % test accuracy.") in f.verdict
    assert f.seeds["seed"].tolist() == sorted(KD_TEST)
    assert f.seeds["ce"].tolist() == [CE_TEST[s] for s in sorted(CE_TEST)]
    assert f.seeds["diff"].tolist() == pytest.approx(diffs)
    t = arms.loc["teacher"]
    assert t["test_mean"] == 0.905 and t["n"] == 1 and math.isnan(t["test_sd"]) and t["parameters"] == 5000
    assert kd["device"] == "cpu (test, 1 thread)" and kd["infer_ms_per_batch"] == 1.5


def test_paired_difference_uses_only_shared_seeds(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    make_db(url, kd_test={1: 0.80, 2: 0.82, 3: 0.81}, ce_test={2: 0.83, 3: 0.85, 4: 0.99})
    f = study_frames(url, "known", load_images=False)
    p = f.paired
    assert p.n == 2
    diffs = [0.82 - 0.83, 0.81 - 0.85]
    mean, sd = _hand(diffs)
    t_975_df1 = 12.706204736174698
    assert p.mean == pytest.approx(mean) and p.ci_high == pytest.approx(mean + t_975_df1 * sd / math.sqrt(2))
    assert p.ci_low < 0 < p.ci_high
    assert f.verdict.startswith("KD and CE could not be told apart at n=2")


def test_verdicts_follow_the_interval() -> None:
    kd = pd.Series([0.80, 0.81, 0.79, 0.80], index=[1, 2, 3, 4])
    assert verdict(paired_difference(kd, kd + pd.Series([0.02, 0.03, 0.02, 0.025], index=kd.index))).startswith(
        "KD hurt")
    assert verdict(paired_difference(kd + pd.Series([0.03, 0.02, 0.04, 0.03], index=kd.index), kd)).startswith(
        "KD helped")
    one = paired_difference(kd.iloc[:1], kd.iloc[:1] - 0.01)
    assert one.n == 1 and math.isnan(one.ci_low) and "at n=1" in verdict(one)
    assert "no seed" in verdict(paired_difference(kd, pd.Series(dtype=float)))
    same = paired_difference(kd + 0.5, kd)  # no spread: no interval, no verdict either way
    assert same.n == 4 and math.isnan(same.ci_low) and math.isnan(same.p_value)
    assert verdict(same).startswith("KD and CE could not be told apart at n=4")
    s = summarize([0.5])
    assert (s.mean, s.n) == (0.5, 1) and math.isnan(s.sd)


def test_grid_best_counts_and_difference_to_ce(known: str) -> None:
    g = study_frames(known, "known", load_images=False).grid.set_index(["temperature", "alpha"])
    assert len(g) == 6  # every configured point, visited or not
    assert g.loc[(2.0, 0.5), "best_val"] == 0.890 and g.loc[(2.0, 0.5), "lr_best"] == 2e-3
    assert g.loc[(2.0, 0.5), "n_trials"] == 2 and g.loc[(2.0, 0.5), "min_val"] == 0.875
    assert g.loc[(2.0, 0.5), "diff_ce"] == pytest.approx(0.890 - max(CE_VAL))
    assert math.isnan(g.loc[(4.0, 0.5), "best_val"]) and g.loc[(4.0, 0.5), "n_pruned"] == 1  # pruned: no best
    assert g.loc[(1.0, 0.9), "n_failed"] == 1 and g.loc[(4.0, 0.9), "n_trials"] == 0


def test_partial_study_says_what_is_missing(db_url: str) -> None:
    make_db(db_url, "partial", kd_test={}, ce_test={}, ce_val=[], teacher=False,
            kd_trials={(1.0, 0.5): [("running", None, 1e-3)], (2.0, 0.5): [("pruned", 0.7, 1e-3)]})
    f = study_frames(db_url, "partial")
    assert any("CE baseline" in m for m in f.missing) and any("finalists" in m for m in f.missing)
    assert any("teacher" in m for m in f.missing)
    assert f.arms.empty and f.curves.empty and f.predictions.images is None
    assert "cannot be compared" in f.verdict and "not shown" in f.importances.note
    assert f.grid["best_val"].isna().all() and int(f.grid["n_running"].sum()) == 1
    assert comparison_table([f]).empty
    counts = f.provenance["counts"]
    assert counts.loc["kd", "running"] == 1 and counts.loc["kd", "pruned"] == 1 and counts.loc["all", "complete"] == 0


def test_unknown_study_lists_the_known_ones(known: str, tmp_path) -> None:
    with pytest.raises(StoreError, match=r"no study named 'nope'.*studies there: known"):
        study_frames(known, "nope")
    with pytest.raises(StoreError, match="no such database file"):
        study_frames(f"sqlite:///{tmp_path / 'absent.db'}", "known")
    assert not (tmp_path / "absent.db").exists()  # the report never creates a database


def test_cli_errors_and_markdown(known: str, tmp_path) -> None:
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, ["report", *args, "--storage", known])

    out = run("nope")
    assert out.exit_code == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("kdbench: error: ") and "studies there: known" in out.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = run("known", "--out", str(blocker / "sub"))
    assert out.exit_code == 2 and out.stderr.count("\n") == 1 and "--out" in out.stderr and "writable" in out.stderr
    out = run("known", "--format", "md")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.startswith("| arm") and "| KD student |" in out.stdout and "[+0.59, +2.01]" in out.stdout
    assert "Source: known: config " in out.stdout and "finalist seeds 1 2 3 4 5 trained 3 epochs, kdbench abc123." \
        in out.stdout
    assert out.stdout == write_report(known, ["known"], fmt="md").markdown


def test_geometric_detection() -> None:
    assert is_geometric([1, 2, 4, 8]) and is_geometric([8, 1, 2, 4]) and is_geometric([0.5, 1.5, 4.5])
    assert not is_geometric([0.1, 0.3, 0.5, 0.7, 0.9]) and not is_geometric([1, 2]) and not is_geometric([0, 1, 2])


def test_a_half_finished_grid_says_its_tuning_budget_so_far() -> None:
    """The lrs and seeds a half-finished grid has seen are not its plan: the words say how many planned runs ended."""
    from kdbench.report.grid import budget_words

    config = {"name": "rep", "search": {"temperature": [1, 4], "alpha": [0.1, 0.9], "lr": [1e-3, 2e-3],
                                        "replicates": 3}}
    rows = [{"kind": "ce", "lr": lr, "seed": s, "state": "complete"} for lr in (1e-3, 2e-3) for s in (0, 1, 2)]
    rows += [{"kind": "kd", "lr": 1e-3, "seed": 0, "state": st} for st in ("complete", "failed", "running")]
    words = budget_words(config, pd.DataFrame(rows))
    assert words == {"kd": "4 cells × 1 lr × 1 seed so far (2 of 24 planned runs ended)", "ce": "2 lr × 3 seeds"}


def test_tuning_budgets_name_ce_with_label_smoothing_and_equal_means_per_cell() -> None:
    """CE+LS is an arm tuned like CE (one cell per ε): its budget is put in words and counts for "equal per cell"."""
    from kdbench.report.grid import _equal_per_cell, budget_words

    lrs, seeds = (1e-3, 2e-3), (0, 1, 2)
    config = {"name": "rep", "search": {"temperature": [1, 4], "alpha": [0.1, 0.9], "lr": list(lrs), "replicates": 3},
              "baseline": {"label_smoothing": [0.1, 0.2]}}
    rows = [{"kind": "kd", "lr": lr, "seed": s, "state": "complete"} for _ in range(4) for lr in lrs for s in seeds]
    rows += [{"kind": "ce", "lr": lr, "seed": s, "state": "complete"} for lr in lrs for s in seeds]
    rows += [{"kind": "ce_ls", "lr": lr, "seed": s, "state": "complete"} for _ in range(2) for lr in lrs for s in seeds]
    words = budget_words(config, pd.DataFrame(rows))
    assert words == {"kd": "4 cells × 2 lr × 3 seeds", "ce": "2 lr × 3 seeds", "ce_ls": "2 cells × 2 lr × 3 seeds"}
    assert _equal_per_cell(words)
    one_eps = budget_words({**config, "baseline": {"label_smoothing": [0.1]}}, pd.DataFrame(rows[:-6]))
    assert one_eps["ce_ls"] == "2 lr × 3 seeds" and _equal_per_cell(one_eps)
    assert not _equal_per_cell({**words, "ce_ls": "2 cells × 1 lr × 3 seeds"})


def test_replicated_grid_cells_effects_and_budgets(tmp_path) -> None:
    from report_db import REP_CELL, REP_LRS, REP_SEEDS, make_replicated_db, rep_val

    url = f"sqlite:///{tmp_path / 'rep.db'}"
    make_replicated_db(url)
    f = study_frames(url, "rep", load_images=False)
    g = f.grid.set_index(["temperature", "alpha"])
    for cell in (c for c in REP_CELL if c is not None):
        means = {lr: sum(rep_val(cell, lr, s) for s in REP_SEEDS) / 3 for lr in REP_LRS}
        best = max(means, key=lambda lr: (means[lr], -lr))
        ce = {s: rep_val(None, 2e-3, s) for s in REP_SEEDS}  # CE's best lr is 2e-3 too
        assert g.loc[cell, "cell_lr"] == best and g.loc[cell, "cell_n"] == 3
        assert g.loc[cell, "cell_mean"] == pytest.approx(means[best])
        assert g.loc[cell, "delta_ce"] == pytest.approx(sum(rep_val(cell, best, s) - ce[s] for s in REP_SEEDS) / 3)
        assert g.loc[cell, "delta_n"] == 3 and g.loc[cell, "cell_ci_half"] > 0
    # T=4, alpha=0.1 is 3 pp above CE with little seed noise: it survives Holm; T=1, alpha=0.9 ties CE
    assert bool(g.loc[(4.0, 0.1), "holm_above_zero"]) and not bool(g.loc[(1.0, 0.9), "holm_above_zero"])
    ev = f.evidence
    assert ev.budgets == {"kd": "4 cells × 2 lr × 3 seeds", "ce": "2 lr × 3 seeds"} and ev.replicates == 3
    assert ev.pruner == "none" and ev.reliability.sentence != ""
    text = " ".join(ev.sentences)
    assert "Tuning budgets: KD: 4 cells × 2 lr × 3 seeds; CE: 2 lr × 3 seeds." in text
    assert "beat CE on validation after Holm's correction: T=4 α=0.1" in text
    assert "reliability" in text and ev.main_effects.sentences["temperature"] in text
    assert set(ev.main_effects.levels["factor"]) == {"temperature", "alpha"}


def test_a_range_study_has_binned_effects_not_cells(tmp_path) -> None:
    from report_db import make_replicated_db

    url = f"sqlite:///{tmp_path / 'range.db'}"
    make_replicated_db(url, "range", search={"temperature": {"low": 1, "high": 8, "log": True},
                                             "alpha": {"low": 0.1, "high": 0.9}, "lr": [1e-3, 2e-3, 3e-3],
                                             "replicates": None, "trials": 20})
    f = study_frames(url, "range", load_images=False)
    assert not f.is_grid and set(f.evidence.binned["param"]) == {"temperature", "alpha"}
    b = f.evidence.binned[f.evidence.binned["param"] == "temperature"]
    assert b["n"].sum() == 20 and b["mean"].is_monotonic_increasing  # accuracy rises with log T by construction
    assert (b["ci_low"] < b["mean"]).all() and (b["mean"] < b["ci_high"]).all()
    assert f.evidence.budgets == {"kd": "20 trials", "ce": "20 trials"}


def test_a_study_stored_before_replicated_grids_is_still_reported(tmp_path) -> None:
    """A config with the retired keys (trials_per_point, baseline.trials) and one run per cell at a sampled lr."""
    import json

    import sqlalchemy as sa
    from report_db import make_db

    from kdbench.store import Store, StudyRow

    url = f"sqlite:///{tmp_path / 'old.db'}"
    make_db(url, "old")
    store = Store.open(url)
    row = store.study("old")
    assert row is not None
    config = json.loads(row.config)
    config["search"] = {"temperature": [1.0, 2.0, 4.0], "alpha": [0.5, 0.9], "trials_per_point": 1,
                        "lr": {"low": 3e-4, "high": 3e-3, "log": True}, "sampler": "tpe", "pruner": "median",
                        "trials": None, "fuse": 1}
    config["baseline"] = {"ce": True, "trials": None}
    with store.session() as s:
        s.execute(sa.update(StudyRow).where(StudyRow.name == "old").values(config=json.dumps(config)))
    f = study_frames(url, "old", load_images=False)
    assert f.evidence.budgets == {"kd": "6 trials", "ce": "3 trials"}
    assert "Tuning was not equal (KD: 6 trials; CE: 3 trials): the arm tuned more is favoured." in f.verdict
    g = f.grid.set_index(["temperature", "alpha"])
    assert g.loc[(2.0, 0.5), "cell_n"] == 1 and math.isnan(g.loc[(2.0, 0.5), "cell_ci_half"])
    assert g.loc[(2.0, 0.5), "cell_mean"] == 0.890  # its better lr's single run
    assert f.evidence.pruner == "median"


def test_inference_time_is_one_number_per_architecture(known: str) -> None:
    """CE and KD students are one architecture: both arms show the median over all its finalist runs."""
    import sqlalchemy as sa

    from kdbench.store import RunRow, Store

    with Store.open(known).session() as s:
        kd = sa.update(RunRow).where(RunRow.kind == "finalist", RunRow.loss == "kd")
        s.execute(kd.values(infer_ms_per_batch=3.0))
    arms = study_frames(known, "known", load_images=False).arms.set_index("arm")
    assert arms.loc["KD student", "infer_ms_per_batch"] == arms.loc["CE student", "infer_ms_per_batch"] == 2.25
    assert arms.loc["teacher", "infer_ms_per_batch"] == 12.5


def test_log_scaled_parameters_get_a_log_colour_scale(tmp_path) -> None:
    from matplotlib.colors import LogNorm
    from report_db import make_replicated_db

    from kdbench.report import plots

    url = f"sqlite:///{tmp_path / 'rep.db'}"
    make_replicated_db(url, "logs", search={"temperature": [1, 2, 4], "lr": {"low": 1e-3, "high": 2e-3, "log": True}})
    make_replicated_db(url, "linear", search={"lr": {"low": 1e-3, "high": 2e-3, "log": False}})
    logs, linear = (study_frames(url, name, load_images=False) for name in ("logs", "linear"))
    assert logs.log_params == ["temperature", "lr"] and linear.log_params == []
    norms = [plots.importances(f).axes[1].collections[0].norm for f in (logs, linear)]
    assert isinstance(norms[0], LogNorm) and not isinstance(norms[1], LogNorm)
    assert logs.importances.table.empty
    assert logs.importances.note.startswith("not shown: 24 complete KD trial(s), fewer than the 50 PED-ANOVA")


def test_importances_are_shown_from_enough_complete_trials(tmp_path) -> None:
    """IMPORTANCE_MIN_TRIALS complete KD trials (runs and Optuna's trials): importances with n; one fewer: none."""
    import optuna
    from optuna.distributions import FloatDistribution

    from kdbench.defaults import IMPORTANCE_MIN_TRIALS
    from kdbench.store import Store

    url = f"sqlite:///{tmp_path / 'imp.db'}"
    n = IMPORTANCE_MIN_TRIALS
    lrs = [1e-4 * 1.05**i for i in range(n)]
    make_db(url, "imp", kd_trials={(2.0, 0.5): [("complete", 0.8 + 0.001 * i, lr) for i, lr in enumerate(lrs)]})
    study = optuna.create_study(study_name="imp", storage=Store.open(url).optuna_storage(), direction="maximize")
    dists = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "temperature": FloatDistribution(1, 8)}
    rng = [(lr, 1 + (i * 7) % 8) for i, lr in enumerate(lrs)]
    study.add_trials([optuna.trial.create_trial(params={"lr": lr, "temperature": t}, distributions=dists,
                                                value=0.8 + 0.001 * i) for i, (lr, t) in enumerate(rng)])
    shown = study_frames(url, "imp", load_images=False)
    assert shown.importances.note == f"from n={n} complete KD trials" and shown.importances.n_trials == n
    assert set(shown.importances.table["param"]) == {"lr", "temperature"}
    hidden = study_frames(url, "imp", load_images=False, importance_min_trials=n + 1)
    assert hidden.importances.table.empty and hidden.importances.note.startswith(f"not shown: {n} complete KD")


def test_comparison_figure_pairs_seeds_and_shows_the_verdicts_interval(known: str) -> None:
    from kdbench.report import plots

    f = study_frames(known, "known", load_images=False)
    left, right = plots.comparison([f]).axes
    assert len(left.lines) == 5  # one CE -> KD line per finalist seed
    assert [tuple(line.get_ydata()) for line in left.lines] == [
        pytest.approx((100 * CE_TEST[s], 100 * KD_TEST[s])) for s in sorted(KD_TEST)]
    p = f.paired
    assert right.get_title() == (f"paired KD − CE (n=5): {100 * p.mean:+.2f} pp, 95% CI [{100 * p.ci_low:+.2f}, "
                                 f"{100 * p.ci_high:+.2f}]")


def test_the_lr_sentence_names_every_arm_left_at_an_end_and_why() -> None:
    """From fixed statuses: all interior (with what the extension added), then an arm at its limit, one trained
    at a single lr, one whose finalists predate the extension, a range search's end."""
    from kdbench.report.grid import lr_sentence
    from kdbench.sweep.extend import ArmLr

    ce = ArmLr("ce", (), (1e-3, 4e-3, 1.6e-2), 4e-3, None, 0, 1, 2)
    kd = ArmLr("kd", (("alpha", 0.5), ("temperature", 4.0)), (2.5e-4, 1e-3, 4e-3), 1e-3, None, 0, 0, 2)
    assert lr_sentence([ce, kd], 2) == ("Every arm tuned to an interior lr. The lr extension (search.lr_extend = 2: "
                                        "each arm's best cell, by its list's ratio, on the search seeds) widened "
                                        "CE's lr list by 1 (0 below, 1 above).")
    top = ArmLr("ce", (), (1e-3, 4e-3, 1.6e-2, 6.4e-2), 6.4e-2, "high", 0, 2, 2, "limit")
    text = lr_sentence([top, kd], 2)
    assert text.startswith("Not every arm tuned to an interior lr: CE's best lr (0.064) is the highest it was trained "
                           "at after 2 extension step(s) on that side (search.lr_extend = 2). The optimum of CE may ")
    assert "verdict may reflect their under-tuning" in text and "widened CE's lr list by 2 (0 below, 2 above)" in text
    off = ArmLr("ce", (), (1e-3, 4e-3), 4e-3, "high", 0, 0, 0, "limit")
    assert "CE's best lr (0.004) is the highest of its candidates (search.lr_extend = 0: not extended)" \
        in lr_sentence([off], 0)
    one = ArmLr("dkd", (), (1e-3,), 1e-3, "low", 0, 0, 2, "single")
    stored = ArmLr("kd", (), (2.5e-4, 1e-3), 2.5e-4, "low", 0, 0, 2, "stored")
    text = lr_sentence([one, stored], 2)
    assert "DKD was trained at one lr (0.001): its lr was not tuned" in text
    assert "KD's best lr (0.00025) is the lowest of its candidates, and its finalists were stored before" in text
    assert "The optimum of DKD and KD may" in text and "widened" not in text
    ranged = ArmLr("ce", (), (1e-4, 1e-2), 1.2e-4, "low", 0, 0, 2, "range")
    assert "CE's best lr (0.00012) is the lowest end of the sampler's lr range (a range search is checked, not " \
           "extended)" in lr_sentence([ranged], 2)


@pytest.mark.parametrize("shift", [0.005, -0.005])
def test_the_verdict_compares_kd_with_the_better_baseline_on_validation(tmp_path: Path, shift: float) -> None:
    """CE with label smoothing 0.5 pp above (or below) CE on every seed, on validation as on test: the verdict's
    KD − baseline and its sentence follow the better on validation; the table keeps each baseline, with CE+LS − CE."""
    url = f"sqlite:///{tmp_path / 'ls.db'}"
    ls = {s: CE_TEST[s] + shift for s in CE_TEST}
    make_db(url, ls_test=ls)
    f = study_frames(url, "known", load_images=False)
    assert f.arms["arm"].tolist() == ["teacher", "CE student", "CE+LS student", "KD student"]
    arms = f.arms.set_index("arm")
    assert arms.loc["CE+LS student", "diff_mean"] == pytest.approx(shift, abs=1e-12)
    assert arms.loc["KD student", "diff_mean"] == pytest.approx(0.013, abs=1e-12)  # the table's Δ stays KD − CE
    best, name = (ls, "CE+LS") if shift > 0 else (CE_TEST, "CE")
    d_mean, d_sd = _hand([KD_TEST[s] - best[s] for s in sorted(KD_TEST)])
    assert f.paired.mean == pytest.approx(d_mean, abs=1e-12) and f.paired.sd == pytest.approx(d_sd, abs=1e-12)
    assert f.paired.n == 5
    assert f.verdict.startswith("KD helped") and f"KD − {name} = {100 * d_mean:+.2f} pp" in f.verdict
    ce_val, ls_val = (100 * sum(v.values()) / 5 for v in (CE_TEST, ls))
    assert (f" The baseline is {name}, the better on validation of CE ({ce_val:.2f} %, n=5) and CE+LS (label "
            f"smoothing 0.1) ({ls_val:.2f} %, n=5)") in f.verdict
    # a study with CE alone says nothing of baselines: its verdict is the one it always was
    make_db(f"sqlite:///{tmp_path / 'ce.db'}")
    assert "The baseline is" not in study_frames(f"sqlite:///{tmp_path / 'ce.db'}", "known", load_images=False).verdict
