"""Models from outside the zoo (kdbench/models/sources.py): torchvision's and timm's, and a user's own file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from kdbench.config import load_study, parse_study
from kdbench.errors import ConfigError
from kdbench.models import build_model
from kdbench.models.sources import model_fingerprint

NETS = """
import torch
from torch import nn


class Student(nn.Module):
    def __init__(self, in_channels, num_classes, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)
"""


def test_torchvision_weights_come_from_torch_home_under_the_librarys_file_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd\.pth not found and kdbench never downloads"):
        build_model("torchvision:resnet18", in_channels=3, num_classes=10, image_size=32, weights="IMAGENET1K_V1")
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model("torchvision:resnet18", in_channels=1, num_classes=10, image_size=32,
                        weights="IMAGENET1K_V1")
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    # the head replaced for 10 classes, the stem summed over RGB for gray images (timm's rule)
    assert model.fc.out_features == 10 and model.fc.in_features == 512
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_timm_builds_for_the_data_and_pretrained_is_cache_only(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("timm")
    model = build_model("timm:resnet10t", in_channels=1, num_classes=7, image_size=32)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ConfigError, match=r"pretrained weights \(timm/resnet10t\.c3_in1k/model\.safetensors\) are "
                       "not in the Hugging Face cache") as err:
        build_model("timm:resnet10t", in_channels=3, num_classes=7, image_size=32, weights="pretrained")
    assert "\n" not in str(err.value) and "never downloads" in str(err.value)
    # the file placed in the hub cache's own layout, as huggingface_hub leaves it: timm loads it, heads adapted
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    reference = timm.create_model("resnet10t", pretrained=False)
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(reference.state_dict(), repo / "snapshots" / "0123abcd" / "model.safetensors")
    loaded = build_model("timm:resnet10t", in_channels=3, num_classes=7, image_size=32, weights="pretrained")
    assert torch.equal(loaded.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert loaded.get_classifier().out_features == 7


def test_a_users_file_relative_to_the_study_with_model_args(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(NETS)
    model = build_model("nets.py:Student", in_channels=1, num_classes=10, image_size=28, model_args={"width": 8},
                        folder=tmp_path)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert isinstance(model, nn.Module) and model.net[1].out_features == 8


def test_the_fingerprint_follows_the_file_its_args_and_weights(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text(NETS)
    first = model_fingerprint("nets.py:Student", None, {}, tmp_path)
    assert model_fingerprint("nets.py:Student", None, {}, tmp_path) == first
    assert model_fingerprint("nets.py:Student", None, {"width": 8}, tmp_path) != first
    (tmp_path / "nets.py").write_text(NETS.replace("nn.ReLU()", "nn.GELU()"))  # no parameter changes
    assert model_fingerprint("nets.py:Student", None, {}, tmp_path) != first
    assert model_fingerprint("torchvision:resnet18", "DEFAULT", {}, None) != model_fingerprint(
        "torchvision:resnet18", None, {}, None)
    # a module path: the module's source file by content
    assert len(model_fingerprint("kdbench.models.architectures:cnn_s", None, {}, None)) == 16


def test_the_study_hash_holds_the_fingerprint_and_zoo_hashes_stay(tmp_path: Path, tiny_study_dict: dict) -> None:
    zoo = parse_study(tiny_study_dict)
    (tmp_path / "nets.py").write_text(NETS)
    raw = dict(tiny_study_dict, student=dict(tiny_study_dict["student"], model="nets.py:Student"))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    before = load_study(tmp_path / "s.yaml").hash
    (tmp_path / "nets.py").write_text(NETS + "\n# edited\n")
    after = load_study(tmp_path / "s.yaml").hash
    assert before != after != zoo.hash
    assert parse_study(dict(tiny_study_dict, student=dict(tiny_study_dict["student"], weights=None))).hash == zoo.hash


@pytest.mark.slow
def test_a_users_model_file_sweeps_and_an_edit_refuses_to_resume(small_study_dict: dict, tmp_path: Path) -> None:
    """Through the CLI: a study whose student is the user's own class (a file beside the study) sweeps with
    --workers 2 and reports, its runs record the model's fingerprint; editing the class makes the next sweep
    exit 2 in one line."""
    import json

    from kdbench.store import Store

    (tmp_path / "nets.py").write_text(NETS)
    raw = dict(small_study_dict, student=dict(small_study_dict["student"], model="nets.py:Student",
                                              model_args={"width": 16}),
               teacher=dict(small_study_dict["teacher"], model="mlp-800"))  # a fraction of cnn-s's CPU time
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    db = f"sqlite:///{tmp_path / 'kd.db'}"
    args = [sys.executable, "-m", "kdbench", "sweep", str(tmp_path / "study.yaml"), "--storage", db, "--device",
            "cpu", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    # two worker processes, each rebuilding the model from its path (the study file's folder, not the cwd)
    done = subprocess.run([*args, "--workers", "2"], capture_output=True, text=True, cwd=tmp_path.parent,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    runs = Store.open(db).runs("tiny")
    assert (runs["state"] == "complete").all() and len(runs) > 0
    models = json.loads(runs["versions"].iloc[0])["models"]
    assert models["student"]["model"] == "nets.py:Student" and len(models["student"]["fingerprint"]) == 16
    report = subprocess.run([sys.executable, "-m", "kdbench", "report", "tiny", "--storage", db, "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    (tmp_path / "nets.py").write_text(NETS.replace("nn.ReLU()", "nn.Tanh()"))
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1, again.stderr
    assert "--set name=tiny-2" in lines[0] and "Traceback" not in again.stderr
