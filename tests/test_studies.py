"""Every shipped study file validates and its models build for its dataset's shape (no data needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdbench.config import load_study
from kdbench.data import DATASETS
from kdbench.models import build_model
from kdbench.sweep import planned_total

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


def test_the_shipped_studies_are_there() -> None:
    names = {p.stem for p in STUDIES}
    assert {"fashion-mnist-quick", "fashion-mnist-tiny-cnn", "fashion-mnist-few-labels",
            "cifar10-resnet50-resnet18", "cifar100-resnet32x4-resnet8x4"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_file_validates_and_builds(path: Path) -> None:
    study = load_study(path)
    assert study.name == path.stem, "a study's name is its file name"
    assert path.read_text().startswith("#"), "each study opens with a comment: what it asks, hardware, time"
    info = DATASETS[study.data.dataset]
    assert planned_total(study) > 0
    for model in (study.teacher.model, study.student.model):
        net = build_model(model, in_channels=info.channels, num_classes=info.num_classes,
                          image_size=study.data.image_size or info.image_size).eval()
        with torch.no_grad():
            out = net(torch.zeros(2, info.channels, info.image_size, info.image_size))
        assert out.shape == (2, info.num_classes)
