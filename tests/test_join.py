"""`kdbench sweep --join NAME`: a worker of a stored study from the store's config, refused in one line when the
name is unknown or this node's model code differs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kdbench import cli
from kdbench.config import load_study, parse_study
from kdbench.store import Store

NETS = """from torch import nn


def Student(num_classes=10, in_channels=1, image_size=28):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, {width}), nn.ReLU(),
                         nn.Linear({width}, num_classes))
"""


def _sweep(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli.main, ["sweep", *args])
    return res.exit_code, res.output


def test_join_of_an_unknown_study_says_how_to_list_them(tiny_study_dict: dict, db_url: str) -> None:
    Store.open(db_url).register_study(parse_study(tiny_study_dict))
    code, out = _sweep("--join", "tiny-2", "--storage", db_url)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "--join tiny-2: no study of that name" in out and "stored there: tiny" in out and "kdbench ls" in out


def test_join_needs_exactly_one_of_a_study_file_and_a_name(tiny_study_dict: dict, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict))
    for args in ([], [str(path), "--join", "tiny"], ["--join", "tiny", "--replace"]):
        code, out = _sweep(*args, "--storage", db_url)
        assert code == 2 and "give a study file or --join NAME, one of them" in out, (args, out)
        assert len(out.strip().splitlines()) == 1


def test_join_refuses_a_node_whose_model_code_differs(tiny_study_dict: dict, db_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The study was stored with nets.py's 32-unit student; this node's nets.py has 64 units: the fingerprint
    (and so the config hash) differs, and the worker is refused with one line naming the model, before any run."""
    monkeypatch.chdir(tmp_path)  # a joining node resolves file paths from its current folder
    (tmp_path / "nets.py").write_text(NETS.format(width=32))
    tiny_study_dict["student"]["model"] = "nets.py:Student"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict))
    study = load_study(path)
    store = Store.open(db_url)
    store.register_study(study)
    from kdbench.join import join_study

    stored_hash = study.hash
    assert join_study(store, "tiny").hash == stored_hash  # the same code: joined
    (tmp_path / "nets.py").write_text(NETS.format(width=64))
    code, out = _sweep("--join", "tiny", "--storage", db_url)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "student.model 'nets.py:Student' has fingerprint" in out and f"config hash {stored_hash}" in out
    assert store.runs("tiny").empty


@pytest.mark.slow
def test_join_runs_a_stored_study_without_its_file(needs_fmnist: None, tiny_study_dict: dict, db_url: str,
                                                   tmp_path: Path) -> None:
    """One visit from the study file, then the file is gone: --join finishes the study from the store's config,
    every planned visit complete exactly once."""
    tiny_study_dict["data"]["val_fraction"] = 0.01  # 600 validation images, not 3,000: each visit evaluates on them
    tiny_study_dict["teacher"]["model"] = "mlp-800"  # half cnn-s's CPU time to train and to cache its logits
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict))
    common = ["--storage", db_url, "--quiet", "--device", "cpu", "--threads", "1", "--cache-dir", str(tmp_path / "c")]
    code, out = _sweep(str(path), *common, "--max-visits", "1")
    assert code == 0, out
    path.unlink()
    code, out = _sweep("--join", "tiny", *common)
    assert code == 0, out
    from kdbench.sweep import planned_total

    runs = Store.open(db_url).runs("tiny")
    assert len(runs) == planned_total(parse_study(tiny_study_dict)) and set(runs["state"]) == {"complete"}
    assert runs["visit"].is_unique and set(runs["attempt"]) == {1}
