"""Audits of the source: every torch.load reads weights only, so no file kdbench opens can run code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from kdbench.errors import CheckpointError
from kdbench.models import build_model, load_state_dict_file

SOURCES = sorted((Path(__file__).resolve().parents[1] / "kdbench").rglob("*.py"))


def _torch_loads(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]


def test_every_torch_load_is_weights_only() -> None:
    calls = {p.name: _torch_loads(p) for p in SOURCES}
    assert sum(map(len, calls.values())) >= 2  # the teacher cache's one loader (weights, logits) and checkpoints
    for name, found in calls.items():
        for call in found:
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                f"{name}:{call.lineno}: torch.load without weights_only=True"


class _Payload:
    def __reduce__(self) -> tuple:
        return (Path("/tmp/kdbench-pwned").touch, ())


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Payload()}, path)
    model = build_model("cnn-s", in_channels=1, num_classes=10, image_size=28)
    with pytest.raises(CheckpointError, match="weights_only=True refused it"):
        load_state_dict_file(model, path)
    assert not Path("/tmp/kdbench-pwned").exists()
