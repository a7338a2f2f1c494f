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


@pytest.mark.parametrize("override, needle", [
    ("student.epochz=1", "unknown key 'student.epochz'"),
    ("search.alpha=[0.5, 1.5]", "search.alpha"),
    ("search.temperature=[0, 2]", "search.temperature"),
    ("search.temperature=[]", "search.temperature"),
    ("search.lr={low: 1.0e-2, high: 1.0e-3}", "search.lr"),
    ("student.epochs=many", "student.epochs"),
    ("name=../evil", "name"),
    ("search.replicates=0", "search.replicates"),
])
def test_bad_values_give_one_line_errors(tiny_study_dict: dict, override: str, needle: str) -> None:
    from kdbench.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_study(tiny_study_dict, "s.yaml", overrides=[override])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and msg.startswith("s.yaml: ")


def test_malformed_yaml(tmp_path: Path) -> None:
    from kdbench.errors import ConfigError

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstudent: {model: [\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_study(p)
