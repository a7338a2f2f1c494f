"""The search's design: replicated cells on shared seeds, CE as one more cell, an order that favours no cell,
and a pruner that never acts on a finished trial."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
from click.testing import CliRunner

from kdbench import cli
from kdbench.config import parse_study
from kdbench.defaults import SEARCH_SEED_OFFSET
from kdbench.errors import ConfigError
from kdbench.store import load_runs
from kdbench.sweep import plan_search, planned_total, run_sweep, search_seeds
from kdbench.sweep.optuna_bridge import report_epoch
from kdbench.sweep.plan import plan_finalists, visit_recipe


def _cell(key: str) -> str:
    return key.rsplit("/lr=", 1)[0] if key.startswith("kd/") else "ce"


def test_every_cell_and_ce_get_the_same_budget_on_the_same_seeds() -> None:
    study = parse_study({"name": "d"})  # the defaults: 4 T x 5 alpha, lr range -> 3 candidates, 3 replicates
    visits = plan_search(study)
    per_cell = Counter(_cell(v.key) for v in visits)
    assert len(per_cell) == 21 and set(per_cell.values()) == {9}  # 3 lr x 3 seeds, CE included
    lrs = study.search.lr_candidates()
    assert lrs is not None and lrs[0] == 3.0e-4 and lrs[-1] == 3.0e-3 and len(lrs) == 3
    assert lrs[1] == pytest.approx((3.0e-4 * 3.0e-3) ** 0.5)  # log-spaced
    seeds = search_seeds(study)
    assert seeds == [SEARCH_SEED_OFFSET, SEARCH_SEED_OFFSET + 1, SEARCH_SEED_OFFSET + 2]
    for cell in per_cell:
        mine = [v for v in visits if _cell(v.key) == cell]
        assert sorted({(v.seed, v.lr) for v in mine}) == sorted({(s, lr) for s in seeds for lr in lrs})
    assert not set(seeds) & {study.seed + 1 + i for i in range(study.finalists.seeds)}  # finalists: fresh seeds
    assert planned_total(study) == 189 + 2 * 5


def test_the_visit_order_is_replicate_major_and_interleaved() -> None:
    study = parse_study({"name": "d"})
    visits = plan_search(study)
    n = len(visits) // 3
    for r in range(3):  # replicate-major: every cell once on seed r before any on seed r + 1
        assert {v.seed for v in visits[r * n:(r + 1) * n]} == {search_seeds(study)[r]}
    orders = [[_cell(v.key) for v in visits[r * n:(r + 1) * n:3]] for r in range(3)]
    assert all(len(set(o)) == 21 for o in orders)
    assert len({tuple(o) for o in orders}) == 3  # a new shuffle per replicate
    for o in orders:  # no T (and so no row of the heatmap) comes first as a block
        temps = [c.split("/")[1] for c in o if c != "ce"]
        assert temps != sorted(temps) and temps[:5] != [temps[0]] * 5
    firsts = {o[0] for o in orders}
    assert plan_search(study) == visits  # seeded: the same plan every time
    assert len(firsts) > 1 or "ce" not in firsts


def test_range_search_gives_ce_as_many_sampler_trials() -> None:
    study = parse_study({"name": "r", "search": {"temperature": {"low": 1, "high": 8, "log": True}, "trials": 6}})
    visits = plan_search(study)
    assert Counter(v.stage for v in visits) == {"kd": 6, "ce": 6}
    assert study.search.pruner_name == "median" and parse_study({"name": "g"}).search.pruner_name == "none"


def test_old_keys_fail_with_the_new_field_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"search\.trials_per_point is no longer a key: .*search\.replicates"):
        parse_study({"name": "old", "search": {"trials_per_point": 2}})
    with pytest.raises(ConfigError, match=r"baseline\.trials is no longer a key: .*KD cell's budget"):
        parse_study({"name": "old", "baseline": {"trials": 3}})
    with pytest.raises(ConfigError, match=r"search: replicates > 1 needs temperature and alpha as lists"):
        parse_study({"name": "r", "search": {"alpha": {"low": 0.1, "high": 0.9}, "replicates": 3}})
    with pytest.raises(ConfigError, match=r"search: sampler 'grid' needs temperature and alpha as lists"):
        parse_study({"name": "r", "search": {"temperature": {"low": 1, "high": 8}, "sampler": "grid"}})
    path = tmp_path / "old.yaml"
    path.write_text("name: old\nsearch: {trials_per_point: 2}\n")
    res = CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", f"sqlite:///{tmp_path / 'kd.db'}"])
    assert res.exit_code == 2 and "search.replicates" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "kd.db").exists()


def test_the_pruner_never_stops_a_finished_trial() -> None:
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # wants to prune everything
    trial = study.ask()
    assert [report_epoch(trial, 0.5, e, 3) for e in range(3)] == [True, True, False]
    one = study.ask()
    assert report_epoch(one, 0.5, 0, 1) is False  # a one-epoch trial is never pruned


@pytest.mark.slow
def test_replicate_i_of_every_cell_and_of_ce_shares_init_and_batch_order(needs_fmnist: None, tiny_study_dict: dict,
                                                                         db_url: str, tmp_path) -> None:
    """alpha = 1 is exactly cross-entropy: on a shared seed, KD cells at alpha = 1 (whatever T) and the CE cell
    start from the same weights, see the same batches and so end at the same accuracy; another seed does not."""
    tiny_study_dict["search"].update(temperature=[2, 4], alpha=[1.0], replicates=2)
    tiny_study_dict["finalists"] = {"top_k": 0, "seeds": 1}
    study = parse_study(tiny_study_dict)
    run_sweep(study, storage=db_url, cache_dir=tmp_path / "cache")
    runs = load_runs(db_url, "tiny")
    search = runs[runs["kind"] != "finalist"]
    assert len(search) == 6 and set(search["state"]) == {"complete"}
    by_seed = search.groupby("seed")
    for _, g in by_seed:
        assert g["val_acc"].nunique() == 1 and g["val_loss"].nunique() == 1, g[["visit", "val_acc", "val_loss"]]
    assert by_seed["val_loss"].first().nunique() == 2


def test_a_list_is_a_grid_per_parameter_even_beside_a_range() -> None:
    """T as a list and α as a range: the sampler draws T from the list only (a categorical), α from the range."""
    from kdbench.sweep import optuna_bridge

    study = parse_study({"name": "mixed", "search": {"temperature": [1, 4], "alpha": {"low": 0.1, "high": 0.9},
                                                     "trials": 12, "sampler": "random"}})
    storage = optuna.storages.InMemoryStorage()
    kd = [v for v in plan_search(study) if v.loss == "kd"]
    drawn = [optuna_bridge.ask(storage, study, v, i, 1)[2] for i, v in enumerate(kd)]
    assert {d["temperature"] for d in drawn} <= {1.0, 4.0}
    assert all(0.1 <= d["alpha"] <= 0.9 for d in drawn) and len({d["alpha"] for d in drawn}) == len(drawn)
    trial = optuna.load_study(study_name="mixed", storage=storage).trials[0]
    assert isinstance(trial.distributions["temperature"], optuna.distributions.CategoricalDistribution)


METHODS_STUDY = {"name": "m", "search": {
    "method": ["kd", "dkd", "lskd"], "temperature": [2, 4], "alpha": [0.1, 0.5], "lr": [1e-3, 3e-3],
    "replicates": 2, "spaces": {"dkd": {"temperature": [2, 4], "nckd_weight": [2, 8]},
                                "lskd": {"temperature": [2, 4], "kd_weight": [1, 9]}}}}


def test_every_method_gets_the_same_budget_on_the_same_seeds() -> None:
    study = parse_study(METHODS_STUDY)
    visits = plan_search(study)
    by_method = Counter(v.stage for v in visits)
    assert by_method == {"kd": 16, "dkd": 16, "lskd": 16, "ce": 4}  # 4 cells x 2 lr x 2 seeds; CE 2 lr x 2 seeds
    for method in ("kd", "dkd", "lskd", "ce"):
        mine = [v for v in visits if v.stage == method]
        assert {(v.seed, v.lr) for v in mine} == {(s, lr) for s in search_seeds(study) for lr in (1e-3, 3e-3)}
    dkd = [v for v in visits if v.stage == "dkd"]
    # unlisted parameters take the published values (tckd 1, CE 1, weight 1); the listed ones are crossed
    assert {dict(v.params)["nckd_weight"] for v in dkd} == {2.0, 8.0}
    assert {(dict(v.params)["tckd_weight"], dict(v.params)["ce_weight"], dict(v.params)["kd_weight"]) for v in dkd} \
        == {(1.0, 1.0, 1.0)}
    assert {v.alpha for v in dkd} == {None} and {v.temperature for v in dkd} == {2.0, 4.0}
    assert "dkd/T=2/ce_weight=1/kd_weight=1/nckd_weight=8/tckd_weight=1/lr=0.001/r=0" in {v.key for v in dkd}
    assert len({v.key for v in visits}) == len(visits)
    assert planned_total(study) == len(visits) + (3 + 1) * 5  # each method's best and CE, 5 seeds each


def test_finalists_are_each_methods_best_cell_at_its_best_lr() -> None:
    """From a fixed frame: the replicate mean of each configuration, a cell's best lr, per method."""
    import json

    import pandas as pd

    study = parse_study(METHODS_STUDY)
    rows = []
    for v in plan_search(study):
        p = dict(v.params)
        # DKD: nckd 8 at lr 3e-3 is best on average (0.80, 0.84 -> 0.82) though nckd 2 has the best single run
        acc = {("dkd", 8.0, 3e-3): [0.80, 0.84], ("dkd", 2.0, 1e-3): [0.85, 0.70]}.get(
            (v.stage, p.get("nckd_weight"), v.lr), [0.5, 0.5])[int(v.key[-1])]
        if v.stage == "lskd":
            acc = 0.6 if (v.temperature, p["kd_weight"], v.lr) == (4.0, 1.0, 1e-3) else 0.55
        rows.append({"visit": v.key, "kind": v.stage, "state": "complete", "val_acc": acc, "temperature": v.temperature,
                     "alpha": v.alpha, "lr": v.lr, "params": json.dumps(p) if p else None, "trial_number": 0})
    finalists = plan_finalists(study, pd.DataFrame(rows))
    firsts = {v.loss: v for v in finalists if v.seed == study.seed + 1}
    assert set(firsts) == {"kd", "dkd", "lskd", "ce"} and len(finalists) == 4 * 5
    assert dict(firsts["dkd"].params)["nckd_weight"] == 8.0 and firsts["dkd"].lr == 3e-3
    assert firsts["dkd"].temperature == 2.0  # the tie between T = 2 and 4 goes to the first key
    assert (firsts["lskd"].temperature, dict(firsts["lskd"].params)["kd_weight"], firsts["lskd"].lr) == (4.0, 1.0, 1e-3)
    assert firsts["lskd"].key == "final/lskd/rank=0/seed=1" and firsts["lskd"].stage == "finalist"


def test_a_budget_axis_runs_the_grid_at_every_budget_on_the_same_seeds(tiny_study_dict: dict) -> None:
    study = parse_study(tiny_study_dict, overrides=["search.budget=[1, 3]"])
    visits = plan_search(study)
    one = parse_study(tiny_study_dict)
    assert len(visits) == 2 * len(plan_search(one))
    by_budget = {label: [v for v in visits if v.budget_label == label] for label in ("1 epoch", "3 epochs")}
    assert [len(v) for v in by_budget.values()] == [len(plan_search(one))] * 2
    strip = [{(v.key.replace("/e=1", "").replace("/e=3", ""), v.seed) for v in vs} for vs in by_budget.values()]
    assert strip[0] == strip[1] == {(v.key, v.seed) for v in plan_search(one)}  # the same cells, lr and seeds
    assert all(f"/e={v.budget.epochs}/r=" in v.key for v in visits if v.budget)
    assert all(v.budget_label == "1 epoch" for v in plan_search(one))  # one budget: the keys stay as they were


def test_probes_spread_over_the_ranking_and_train_like_the_finalists() -> None:
    """From a fixed frame: 12 cells ranked by their replicate mean; 1 finalist, then 4 probes spread evenly over
    the other 11 (search ranks 2, 5, 9, 12), on the finalists' seeds and budget; the ranking is read at the
    largest search budget only."""
    import pandas as pd

    study = parse_study({"name": "p", "search": {"temperature": [1, 2, 4, 8], "alpha": [0.1, 0.5, 0.9],
                                                 "lr": [1e-3], "replicates": 2, "budget": [1, 3]},
                         "finalists": {"top_k": 1, "seeds": 3, "budget": 15, "probe": 4}})
    rows = []
    for v in plan_search(study):
        if v.stage == "ce":
            acc = 0.5
        else:  # at 3 epochs a cell's value rises with T then alpha; at 1 epoch the reverse (must be ignored)
            acc = 0.6 + 0.01 * (4 * [1, 2, 4, 8].index(v.temperature) + [0.1, 0.5, 0.9].index(v.alpha))
            acc = acc if v.budget.epochs == 3 else 1.2 - acc
        rows.append({"visit": v.key, "kind": v.stage, "state": "complete", "val_acc": acc, "budget": v.budget_label,
                     "temperature": v.temperature, "alpha": v.alpha, "lr": v.lr, "params": None, "trial_number": 0})
    visits = plan_finalists(study, pd.DataFrame(rows))
    finals = [v for v in visits if v.stage == "finalist"]
    probes = [v for v in visits if v.stage == "probe"]
    assert {v.budget_label for v in visits} == {"15 epochs"} and {v.seed for v in visits} == {1, 2, 3}
    assert {(v.loss, v.temperature, v.alpha) for v in finals} == {("kd", 8.0, 0.9), ("ce", None, None)}
    # the 12 cells best first: (8, .9), (8, .5), (8, .1), (4, .9), ...; probes: positions 0, 3, 7, 10 of the rest
    ranked = [(t, a) for t in (8.0, 4.0, 2.0, 1.0) for a in (0.9, 0.5, 0.1)]
    expected = {ranked[1 + i]: 1 + i for i in (0, 3, 7, 10)}
    assert {(v.temperature, v.alpha): v.rank for v in probes} == expected
    assert len(probes) == 4 * 3 and all(v.key.startswith("probe/kd/T=") and not v.is_search for v in probes)
    assert planned_total(study) == len(plan_search(study)) + len(visits)


def test_label_smoothed_ce_is_a_baseline_arm_with_a_kd_cells_budget_and_a_finalist() -> None:
    """``baseline.label_smoothing: [0.05, 0.1]``: two more cells of the arm ce_ls, each at every lr on every search
    seed at the same budget as a KD cell; its best cell (the replicate mean at its best lr) gets a finalist on the
    finalist seeds; every key once."""
    import json

    import pandas as pd

    study = parse_study({"name": "ls", "search": {"temperature": [2, 4], "alpha": [0.5], "lr": [1e-3, 2e-3]},
                         "baseline": {"label_smoothing": [0.1, 0.05]}})
    visits = plan_search(study)
    assert len({v.key for v in visits}) == len(visits) == (2 + 1 + 2) * 2 * 3 == study.search_visits
    by_cell: dict[str, set[tuple[int, float | None, str | None]]] = {}
    for v in visits:
        cell = v.key.rsplit("/lr=", 1)[0]
        by_cell.setdefault(cell, set()).add((v.seed, v.lr, v.budget_label))
    assert set(by_cell) == {"kd/T=2/a=0.5", "kd/T=4/a=0.5", "ce", "ce_ls/label_smoothing=0.05",
                            "ce_ls/label_smoothing=0.1"}
    assert len({frozenset(s) for s in by_cell.values()}) == 1  # every cell: the same seeds, lrs and budget
    ls = [v for v in visits if v.stage == "ce_ls"]
    assert {v.loss for v in ls} == {"ce_ls"} and {dict(v.params)["label_smoothing"] for v in ls} == {0.05, 0.1}
    assert {visit_recipe(study, v).label_smoothing for v in ls} == {0.05, 0.1}  # what each trains with
    assert {visit_recipe(study, v).label_smoothing for v in visits if v.stage != "ce_ls"} == {0.0}
    rows = [{"visit": v.key, "kind": v.stage, "state": "complete", "temperature": v.temperature, "alpha": v.alpha,
             "lr": v.lr, "params": json.dumps(dict(v.params)) if v.params else None, "trial_number": 0,
             "val_acc": 0.9 if (dict(v.params).get("label_smoothing"), v.lr) == (0.05, 2e-3) else 0.5}
            for v in visits]
    finalists = plan_finalists(study, pd.DataFrame(rows))
    assert len({v.key for v in finalists}) == len(finalists) == 3 * 5 == planned_total(study) - len(visits)
    best = [v for v in finalists if v.loss == "ce_ls"]
    assert [v.seed for v in best] == [1, 2, 3, 4, 5] and {v.key for v in best} == {
        f"final/ce_ls/rank=0/seed={s}" for s in range(1, 6)}
    assert {(dict(v.params)["label_smoothing"], v.lr, v.budget_label) for v in best} == {(0.05, 2e-3, "3 epochs")}
    assert visit_recipe(study, best[0]).label_smoothing == 0.05


def test_the_label_smoothed_loss_matches_a_hand_computation() -> None:
    """CE with label smoothing, as a ce_ls visit trains (``cross_entropy(..., label_smoothing=recipe's)``):
    (1 - e) * -log p_y + e * mean_k(-log p_k), by hand on fixed logits."""
    import math

    import torch
    import torch.nn.functional as F

    study = parse_study({"name": "ls", "baseline": {"label_smoothing": [0.2]}})
    visit = next(v for v in plan_search(study) if v.stage == "ce_ls")
    eps = visit_recipe(study, visit).label_smoothing
    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]), torch.tensor([0, 2])
    hand = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        log_z = math.log(sum(math.exp(z) for z in row))
        nll = [log_z - z for z in row]
        hand += ((1 - eps) * nll[y] + eps * sum(nll) / len(row)) / len(logits)  # the batch mean
    got = F.cross_entropy(logits, labels, label_smoothing=eps)
    assert eps == 0.2 and float(got) == pytest.approx(hand, abs=1e-6)
    assert float(got) != pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-3)  # smoothing changed it


def test_a_range_search_gives_label_smoothed_ce_as_many_trials_each_at_a_listed_epsilon() -> None:
    """A range search: ce_ls gets ``trials`` visits, trial r at the r-th epsilon (cycled); the sampler draws lr only."""
    from kdbench.sweep import optuna_bridge

    study = parse_study({"name": "r", "search": {"temperature": {"low": 1, "high": 4}, "alpha": [0.5], "trials": 4},
                         "baseline": {"label_smoothing": [0.05, 0.1]}})
    ls = [v for v in plan_search(study) if v.stage == "ce_ls"]
    assert [dict(v.params)["label_smoothing"] for v in ls] == [0.05, 0.1, 0.05, 0.1]
    assert [v.key for v in ls] == [f"ce_ls/r={r}" for r in range(4)] and {v.lr for v in ls} == {None}
    storage = optuna.storages.InMemoryStorage()
    asked = [optuna_bridge.ask(storage, study, v, i, 1) for i, v in enumerate(ls[:2])]
    assert [o.study_name for o, _, _ in asked] == ["r.ce_ls", "r.ce_ls"]
    assert [p["label_smoothing"] for _, _, p in asked] == [0.05, 0.1] and all(1e-5 < p["lr"] < 1 for _, _, p in asked)
