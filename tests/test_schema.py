"""``kdbench schema``: the study file's JSON Schema agrees with validation on the shipped studies and on broken ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from kdbench import cli
from kdbench.config import parse_study, read_study_file
from kdbench.config.schema import study_json_schema
from kdbench.errors import ConfigError
from kdbench.studyfile import apply_overrides

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))
QUICK = Path(__file__).resolve().parents[1] / "studies" / "fashion-mnist-quick.yaml"

# Held out: a study an editor should flag before kdbench is run (alpha outside [0, 1], a misspelt key).
BROKEN = """\
name: broken
student: {model: mlp-800, epochz: 3}
search:
  temperature: [2, 4]
  alpha: 1.8
"""


@pytest.fixture(scope="module")
def printed() -> dict[str, Any]:
    res = CliRunner().invoke(cli.main, ["schema"])
    assert res.exit_code == 0, res.output
    schema: dict[str, Any] = json.loads(res.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _errors(schema: dict[str, Any], raw: Any) -> list[jsonschema.ValidationError]:
    return list(jsonschema.Draft202012Validator(schema).iter_errors(raw))


def _validates(raw: Any) -> bool:
    try:
        parse_study(copy.deepcopy(raw), "s.yaml")
    except ConfigError:
        return False
    return True


def test_the_printed_schema_is_the_library_s(printed: dict[str, Any]) -> None:
    assert printed == study_json_schema()
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema" and printed["required"] == ["name"]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_shipped_study_validates_against_the_printed_schema(printed: dict[str, Any], path: Path) -> None:
    raw = read_study_file(path)
    assert _errors(printed, raw) == [] and _validates(raw)


def test_a_broken_study_is_rejected_by_the_schema_and_by_validation(printed: dict[str, Any]) -> None:
    raw = yaml.safe_load(BROKEN)
    found = {(tuple(e.absolute_path), e.validator) for e in _errors(printed, raw)}
    assert (("student",), "additionalProperties") in found  # epochz: unknown keys are refused
    assert any(path == ("search", "alpha") for path, _ in found)
    assert not _validates(raw)
    fixed = apply_overrides(raw, ["search.alpha=[0.8]"])
    fixed["student"].pop("epochz")
    assert _errors(printed, fixed) == [] and _validates(fixed)


# Each case: overrides on the quick study, and whether it is a valid study. The schema must say the same as
# validation. Rules over several keys (low <= high, equal grids per method) are validation's alone and not listed.
CASES: list[tuple[list[str], bool]] = [
    ([], True),
    (["search.alpha=[0, 1]"], True),
    (["search.alpha=[0.5, 1.8]"], False),
    (["search.alpha=1.8"], False),
    (["search.alpha={low: 0.0, high: 1.5}"], False),
    (["search.alpha={low: 0.1, high: 0.9}", "search.replicates=null"], True),
    (["search.temperature=[0, 2]"], False),
    (["search.temperature={low: 0.5, high: 8, log: true}", "search.replicates=1"], True),
    (["search.lr=[-1.0e-3]"], False),
    (["search.lr=[1.0e-3, 3.0e-3]"], True),
    (["search.method=[kd, crd]"], False),
    (["search.method=[kd, kd]"], False),
    (["search.method=dkd"], True),
    (["search.method=dkd", "search.spaces={dkd: {nckd_weight: [-1]}}"], False),
    (["search.method=dkd", "search.spaces={dkd: {inter_weight: [1]}}"], False),
    (["search.method=dkd", "search.spaces={dkd: {nckd_weight: [8], kd_warmup_epochs: 20}}"], True),
    (["search.method=dkd", "search.spaces={kd: {temperature: [2]}}"], False),
    (["search.budget=[1, 3]"], True),
    (["search.budget={epochs: [1, 3]}"], True),
    (["search.budget={epochs: []}"], False),
    (["search.fuse=4"], True),
    (["search.fuse=0"], False),
    (["search.sampler=bayes"], False),
    (["finalists.budget=15"], True),
    (["finalists.budget={steps: 400}"], True),
    (["finalists.budget={epochs: 2, steps: 30}"], False),
    (["finalists.budget=0"], False),
    (["data.augment=rotate"], False),
    (["data.augment=flip", "teacher.cache={views: 2}"], True),
    (["teacher.cache={views: 0}"], False),
    (["teacher.min_accuracy=1.5"], False),
    (["student.step_milestones=[0.3, 0.6]"], True),
    (["student.step_milestones=[1.5]"], False),
    (["student.epochz=1"], False),
    (["name=quick.v2"], True),
    (["name=quick.ce"], False),
    (["name=my study"], False),
]


@pytest.mark.parametrize(("overrides", "valid"), CASES, ids=lambda c: " ".join(c) if isinstance(c, list) else str(c))
def test_the_schema_agrees_with_validation(printed: dict[str, Any], overrides: list[str], valid: bool) -> None:
    raw = apply_overrides(read_study_file(QUICK), overrides)
    assert _validates(raw) is valid
    assert (_errors(printed, raw) == []) is valid, [e.message for e in _errors(printed, raw)]


def test_every_key_has_a_description_and_every_default_is_shown(printed: dict[str, Any]) -> None:
    models = {"(top level)": printed, **printed["$defs"]}
    for model, node in models.items():
        for key, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{model}.{key} has no description: give its field a docstring"
    search = printed["$defs"]["SearchConfig"]["properties"]
    assert search["temperature"]["default"] == [1.0, 2.0, 4.0, 8.0]
    assert search["lr"]["default"] == {"low": 3.0e-4, "high": 3.0e-3, "log": True}
    assert printed["properties"]["data"]["default"]["dataset"] == "fashion-mnist"


def test_schema_out_writes_the_file_or_says_why_not_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "kdbench.schema.json"
    res = CliRunner().invoke(cli.main, ["schema", "--out", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text()) == study_json_schema()
    bad = CliRunner().invoke(cli.main, ["schema", "--out", str(tmp_path / "missing" / "x.json")])
    lines = bad.stderr.strip().splitlines()
    assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith("kdbench: error: ")
    assert "cannot write the schema" in lines[0]
