from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.config import load_study, parse_study

STUDIES = sorted(Path(__file__).resolve().parents[1].joinpath("studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_validate(path: Path) -> None:
    assert load_study(path).name == path.stem


def test_hash_is_stable_and_ignores_key_order_and_root(tiny_study_dict: dict) -> None:
    a = parse_study(tiny_study_dict)
    b = parse_study(dict(reversed(list(tiny_study_dict.items()))))
    assert a.hash == b.hash and len(a.hash) == 16
    c = parse_study(tiny_study_dict, overrides=["data.root=/elsewhere"])
    assert c.hash == a.hash
    d = parse_study(tiny_study_dict, overrides=["student.epochs=2"])
    assert d.hash != a.hash and d.student.epochs == 2


def test_budgets_read_as_epochs_or_steps_and_leave_old_hashes_alone(tiny_study_dict: dict) -> None:
    base = parse_study(tiny_study_dict)
    assert [b.label for b in base.search_budgets] == ["1 epoch"] and base.finalist_budget.label == "1 epoch"
    s = parse_study(tiny_study_dict, overrides=["finalists.budget=20", "search.budget=[3, 1]", "finalists.probe=1"])
    assert [b.label for b in s.search_budgets] == ["1 epoch", "3 epochs"]  # sorted, smallest first
    assert s.selection_budget.label == "3 epochs" and s.finalist_budget.label == "20 epochs"
    assert s.finalist_budget.apply(s.student).epochs == 20 and s.finalist_budget.apply(s.student).steps is None
    steps = parse_study(tiny_study_dict, overrides=["search.budget={steps: [50, 100]}",
                                                    "finalists.budget={steps: 400}"])
    assert [b.key for b in steps.search_budgets] == ["s=50", "s=100"] and steps.finalist_budget.label == "400 steps"
    assert steps.finalist_budget.apply(steps.student).steps == 400
    # the new keys at their defaults leave a stored study's hash as it was
    defaults = parse_study(tiny_study_dict, overrides=["finalists.probe=0", "finalists.budget=null",
                                                       "search.budget=null"])
    assert defaults.hash == base.hash and s.hash != base.hash


@pytest.mark.parametrize("override, needle", [
    ("student.epochz=1", "unknown key 'student.epochz'"),
    ("search.alpha=[0.5, 1.5]", "search.alpha"),
    ("search.temperature=[0, 2]", "search.temperature"),
    ("search.temperature=[]", "search.temperature"),
    ("search.lr={low: 1.0e-2, high: 1.0e-3}", "search.lr"),
    ("student.epochs=many", "student.epochs"),
    ("name=../evil", "name"),
    ("search.replicates=0", "search.replicates"),
    ("finalists.budget={epochs: 2, steps: 30}", "finalists.budget: give epochs or steps (one of them)"),
    ("finalists.budget=0", "finalists.budget.epochs"),
    ("finalists.probe=-1", "finalists.probe"),
    ("search.budget=[1, 1]", "search.budget: lists a budget twice"),
    ("search.budget=[]", "search.budget: is empty"),
    ("search.budget=[{epochs: 1}, {steps: 30}]", "search.budget: mixes epochs and steps"),
    ("search.temperature={low: 1, high: 4}", "search.budget (a budget axis) needs a grid"),
    ("baseline.label_smoothing=[1.0]", "baseline.label_smoothing: each label smoothing epsilon must be a number in"),
    ("baseline.label_smoothing=[-0.1, 0.1]", "baseline.label_smoothing: each label smoothing epsilon"),
    ("baseline.label_smoothing=[0.1, 0.1]", "baseline.label_smoothing: lists an epsilon twice"),
    ("baseline.label_smoothing=[smooth]", "baseline.label_smoothing: each label smoothing epsilon"),
    ("student.eval_every=0", "student.eval_every"),
    ("student.eval_every=often", "student.eval_every"),
])
def test_bad_values_give_one_line_errors(tiny_study_dict: dict, override: str, needle: str) -> None:
    from kdbench.errors import ConfigError

    if override.startswith("search.temperature={"):  # a range beside a budget axis
        tiny_study_dict["search"]["budget"] = [1, 2]
    with pytest.raises(ConfigError) as err:
        parse_study(tiny_study_dict, "s.yaml", overrides=[override])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and msg.startswith("s.yaml: ")


def test_eval_every_is_steps_and_leaves_old_hashes_alone(tiny_study_dict: dict) -> None:
    base = parse_study(tiny_study_dict)
    assert base.student.eval_every is None
    assert parse_study(tiny_study_dict, overrides=["student.eval_every=null"]).hash == base.hash
    grid = parse_study(tiny_study_dict, overrides=["student.eval_every=25"])
    assert grid.student.eval_every == 25 and grid.hash != base.hash
    assert grid.search_visits == base.search_visits  # it changes the curves, not what is trained


def test_malformed_yaml(tmp_path: Path) -> None:
    from kdbench.errors import ConfigError

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstudent: {model: [\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_study(p)


def test_label_smoothing_is_read_sorted_and_leaves_old_hashes_alone(tiny_study_dict: dict) -> None:
    base = parse_study(tiny_study_dict)
    assert base.baseline.label_smoothing == []
    assert parse_study(tiny_study_dict, overrides=["baseline.label_smoothing=[]"]).hash == base.hash
    one = parse_study(tiny_study_dict, overrides=["baseline.label_smoothing=0.1"])
    assert one.baseline.label_smoothing == [0.1] and one.hash != base.hash
    two = parse_study(tiny_study_dict, overrides=["baseline.label_smoothing=[0.2, 0]"])
    assert two.baseline.label_smoothing == [0.0, 0.2] and two.search_visits == base.search_visits + 2
