"""The Python API (kdbench/api.py): kdbench.sweep on a user's objects: classes, a trained module, data in memory."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import kdbench
from kdbench.errors import ConfigError, StoreError

NETS = """
from torch import nn


class Student(nn.Module):
    def __init__(self, in_channels, num_classes, image_size):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 32), nn.ReLU(),
                                 nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)
"""


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ThreeClasses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # inspect.getsource finds a class through its module
    spec.loader.exec_module(module)
    return module


def _nets(tmp_path: Path, name: str, source: str) -> Any:
    (tmp_path / f"{name}.py").write_text(source)
    return _module(tmp_path / f"{name}.py", name).Student


@pytest.fixture(scope="module")
def arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """4000 training and 1000 test images of Fashion-MNIST as arrays (what a notebook holds)."""
    from conftest import FMNIST

    from kdbench.data import load_raw

    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST package files absent: apt-get install -y dataset-fashion-mnist")
    _, train, test, _ = load_raw("fashion-mnist")
    return train.images[:4000], train.labels[:4000], test.images[:1000], test.labels[:1000]


def _trained_teacher(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Teacher()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xs = (x.float() / 255 - 0.286) / 0.353  # kdbench normalises with the training pixels' statistics
    for _ in range(3):
        for i in range(0, len(xs), 256):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[i:i + 256]), y[i:i + 256]).backward()
            opt.step()
    return model.eval()


def _study(tiny_study_dict: dict) -> dict:
    raw = dict(tiny_study_dict)
    raw["data"] = {"val_fraction": 0.1, "subset": 600}
    raw["teacher"] = {"min_accuracy": 0.3}
    raw["student"] = {"epochs": 1, "batch_size": 64}
    raw["search"] = dict(raw["search"], temperature=[4])
    raw["finalists"] = {"top_k": 1, "seeds": 2}
    return raw


@pytest.mark.slow
def test_objects_and_arrays_sweep_resume_and_an_edit_refuses(arrays: Any, tiny_study_dict: dict,
                                                             tmp_path: Path) -> None:
    """A student class, a trained teacher module and arrays: a tiny sweep returns runs, a verdict and a report;
    the same objects resume it (nothing trained twice); an edited class or another trained teacher is refused in
    one line naming name= and replace=True; name= runs the edit as a new study."""
    student = _nets(tmp_path, "nets_a", NETS)
    teacher = _trained_teacher(arrays[0], arrays[1])
    db = f"sqlite:///{tmp_path / 'kd.db'}"
    opts: dict[str, Any] = dict(storage=db, device="cpu", threads=1, cache_dir=tmp_path / "cache")
    result = kdbench.sweep(_study(tiny_study_dict), teacher=teacher, student=student, data=arrays, **opts)

    runs = result.runs
    assert len(runs) > 0 and (runs["state"] == "complete").all()
    assert set(runs["kind"]) == {"kd", "ce", "finalist"}
    models = runs["versions"].iloc[0]["models"]
    assert models["student"]["model"] == "object:Student" and len(models["student"]["fingerprint"]) == 16
    assert models["teacher"]["model"] == "object:Teacher"
    assert result.verdict and "\n" not in result.verdict
    rep = result.report(out=tmp_path / "report")
    assert (tmp_path / "report" / "index.html").is_file() and rep.out == tmp_path / "report"
    assert any(f.suffix == ".csv" for f in rep.files)
    # the test images given as data= reach the report (prediction grid, per-class change), which cannot read them
    assert "per-class.csv" in {f.name for f in rep.files}
    assert "test images unavailable" not in (tmp_path / "report" / "index.html").read_text()
    stored = kdbench.load_runs(db, "tiny")
    assert len(stored) == len(runs)

    again = kdbench.sweep(_study(tiny_study_dict), teacher=teacher, student=student, data=arrays, **opts)
    assert len(again.runs) == len(runs)  # resumed: the same study, nothing to train
    assert again.study.hash == result.study.hash

    edited = _nets(tmp_path, "nets_b", NETS.replace("nn.ReLU()", "nn.Tanh()"))  # same name, same parameters
    with pytest.raises(StoreError) as err:
        kdbench.sweep(_study(tiny_study_dict), teacher=teacher, student=edited, data=arrays, **opts)
    message = str(err.value)
    assert "\n" not in message and "name=tiny-2" in message and "replace=True" in message
    assert "--replace" not in message and "--set" not in message

    other = _trained_teacher(arrays[0], arrays[1], seed=1)
    with pytest.raises(StoreError, match="created from another config"):
        kdbench.sweep(_study(tiny_study_dict), teacher=other, student=student, data=arrays, **opts)
    assert len(kdbench.load_runs(db, "tiny")) == len(runs)  # refused: nothing stored

    new = kdbench.sweep(_study(tiny_study_dict), teacher=teacher, student=edited, data=arrays, name="tiny-tanh",
                        max_visits=1, **opts)
    assert new.name == "tiny-tanh" and len(new.runs) == 1
    fingerprints = {r["versions"]["models"]["student"]["fingerprint"] for r in (runs.iloc[0], new.runs.iloc[0])}
    assert len(fingerprints) == 2


def test_the_fingerprint_follows_the_source_the_shapes_and_a_trained_modules_weights(tmp_path: Path) -> None:
    from kdbench.models.objects import model_object

    dims = dict(in_channels=1, num_classes=10, image_size=28)
    a = model_object("student", _nets(tmp_path, "fp_a", NETS), **dims)
    same = model_object("student", _nets(tmp_path, "fp_same", NETS), **dims)
    edited = model_object("student", _nets(tmp_path, "fp_b", NETS.replace("nn.ReLU()", "nn.GELU()")), **dims)
    assert a.fingerprint == same.fingerprint != edited.fingerprint and a.architecture == edited.architecture
    assert not a.trained and a.name == "object:Student"
    first = a.spec.builder(**dims)
    second = a.spec.builder(**dims)
    assert first is not second  # a fresh model per build
    torch.manual_seed(0)
    t1 = model_object("teacher", Teacher(), **dims)
    torch.manual_seed(1)
    t2 = model_object("teacher", Teacher(), **dims)
    assert t1.trained and t1.architecture == t2.architecture and t1.fingerprint != t2.fingerprint
    module = Teacher()
    built = model_object("teacher", module, **dims).spec.builder(**dims)
    assert built is not module and torch.equal(built.net[1].weight, module.net[1].weight)
    norm = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10)).eval()  # buffers, a 0-d one among them (num_batches_tracked)
    before = model_object("teacher", norm, **dims).fingerprint
    norm[1].running_mean += 1
    assert model_object("teacher", norm, **dims).fingerprint != before  # buffers are weights too


def test_a_class_without_readable_source_is_fingerprinted_by_its_code() -> None:
    """A class whose source inspect cannot read (defined by exec, as a notebook cell's is on Python 3.11): the same
    code gives the same fingerprint in another definition, an edit another one."""
    from kdbench.models.objects import model_object

    def define(source: str) -> Any:
        scope: dict[str, Any] = {"__name__": "cell", "nn": nn}
        exec(source, scope)
        return scope["Student"]

    dims = dict(in_channels=1, num_classes=10, image_size=28)
    with pytest.raises((OSError, TypeError)):
        import inspect

        inspect.getsource(define(NETS))
    a, same = (model_object("student", define(NETS), **dims) for _ in range(2))
    edited = model_object("student", define(NETS.replace("nn.ReLU()", "nn.Tanh()")), **dims)
    assert a.fingerprint == same.fingerprint != edited.fingerprint
    trained = [model_object("teacher", define(NETS)(1, 10, 28), **dims) for _ in range(2)]
    assert trained[0].fingerprint != trained[1].fingerprint  # other weights


def test_the_study_hash_holds_the_objects_fingerprint(tmp_path: Path, tiny_study_dict: dict) -> None:
    from kdbench.config import parse_study
    from kdbench.models.objects import model_object

    raw = dict(tiny_study_dict, student=dict(tiny_study_dict["student"], model="object:Student"))
    dims = dict(in_channels=1, num_classes=10, image_size=28)
    hashes = []
    for name, source in (("h_a", NETS), ("h_b", NETS.replace("nn.ReLU()", "nn.SiLU()"))):
        study = parse_study(raw)
        study.set_model_object("student", model_object("student", _nets(tmp_path, name, source), **dims))
        hashes.append(study.hash)
    assert hashes[0] != hashes[1]
    with pytest.raises(ConfigError, match=r"names a Python object given to kdbench\.sweep"):
        _ = parse_study(raw).hash  # the name alone, as a study file would hold it: one line, no import attempt


def _one_line_refusal(call: Any, match: str) -> None:
    with pytest.raises(ConfigError) as err:
        call()
    assert "\n" not in str(err.value), str(err.value)
    assert match in str(err.value), str(err.value)


def test_bad_objects_and_data_are_refused_in_one_line_before_anything_is_stored(
        arrays: Any, tiny_study_dict: dict, tmp_path: Path) -> None:
    db = tmp_path / "kd.db"
    opts: dict[str, Any] = dict(storage=f"sqlite:///{db}", device="cpu", threads=1, cache_dir=tmp_path / "cache")
    study = _study(tiny_study_dict)

    def boom() -> nn.Module:
        raise RuntimeError("no such layer")

    shared = Teacher()

    cases: list[tuple[dict[str, Any], str]] = [
        ({"student": nn.Linear(784, 10)}, "student=: got a Linear instance; give its class"),
        ({"student": 42}, "student=: got a int; give an nn.Module class"),
        ({"student": lambda: "not a model"}, "returned a str, not a torch.nn.Module"),
        ({"student": ThreeClasses}, "student=: model 'object:ThreeClasses' returned (2, 3)"),
        ({"student": lambda: shared}, "returned the same module twice; it must build a new one"),
        ({"teacher": boom}, "teacher=: test_bad_objects_and_data_are_refused_in_one_line_before_anything_is_stored."
                            "<locals>.boom() raised RuntimeError: no such layer"),
        ({"teacher": ThreeClasses()}, "teacher=: model 'object:ThreeClasses' returned (2, 3)"),
        ({"data": (1, 2, 3)}, "data=: got a tuple of 3; give (train, test) torch Datasets"),
        ({"data": (arrays[0].float(), arrays[1], arrays[2], arrays[3])}, "data= x_train: images must be uint8"),
        ({"data": ([(torch.zeros(1, 28, 28), "shirt")], [(torch.zeros(1, 28, 28), 0)])},
         "data= train[0]: label 'shirt' is not an integer class index"),
        ({"student": Teacher, "workers": 2}, "workers=2: objects given as teacher=, student= or data= live in this "
                                             "process only"),
    ]
    for kwargs, match in cases:
        kwargs = {"data": arrays, **kwargs}
        _one_line_refusal(lambda kwargs=kwargs: kdbench.sweep(study, **kwargs, **opts), match)
    _one_line_refusal(lambda: kdbench.sweep(study, workers=2, **opts), "workers=2: each worker reads the study "
                      "from its file")
    _one_line_refusal(lambda: kdbench.sweep(42, **opts), "study: got a int; give a study file's path")  # type: ignore[arg-type]
    assert not db.exists()  # refused before the store was opened


def test_datasets_of_tensors_and_pil_images_become_the_same_sets() -> None:
    from PIL import Image

    from kdbench.api import _data_sets

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.arange(20) % 4
    tensors = [(x[i][None].float() / 255, int(y[i])) for i in range(20)]  # ToTensor()'s [0, 1] floats
    pil = [(Image.fromarray(x[i].numpy()), torch.tensor(int(y[i]))) for i in range(20)]
    a_info, a_train, a_test = _data_sets((tensors, tensors[:8]))
    b_info, b_train, b_test = _data_sets((pil, pil[:8]))
    c_info, c_train, _ = _data_sets((x, y, x[:8], y[:8]))
    assert a_info.num_classes == b_info.num_classes == c_info.num_classes == 4
    assert torch.equal(a_train.images, b_train.images) and torch.equal(b_train.images, c_train.images)
    assert torch.equal(a_train.labels, c_train.labels) and len(a_test) == len(b_test) == 8


@pytest.mark.slow
def test_a_study_file_with_an_import_path_beside_objects(arrays: Any, tiny_study_dict: dict, tmp_path: Path) -> None:
    """A study given as a path: ``student="nets.py:Student"`` resolves beside the study file (the serialisable form),
    next to a trained teacher module and arrays."""
    import yaml

    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(_study(tiny_study_dict)))
    result = kdbench.sweep(tmp_path / "study.yaml", student="nets.py:Student",
                           teacher=_trained_teacher(arrays[0], arrays[1]), data=arrays, max_visits=1,
                           storage=f"sqlite:///{tmp_path / 'kd.db'}", device="cpu", threads=1,
                           cache_dir=tmp_path / "cache")
    runs = result.runs
    assert len(runs) == 1 and runs["state"].iloc[0] == "complete"
    models = runs["versions"].iloc[0]["models"]
    assert models["student"]["model"] == "nets.py:Student" and models["teacher"]["model"] == "object:Teacher"
    assert result.study.data.dataset == "in-memory"


@pytest.mark.slow
def test_workers_run_a_study_file_without_objects(small_study_dict: dict, tmp_path: Path) -> None:
    """workers=2 on a study file (no objects): the parent prepares the study, two `kdbench sweep` processes share
    its visits, as `kdbench sweep --workers 2` does."""
    import yaml

    (tmp_path / "study.yaml").write_text(yaml.safe_dump(small_study_dict))
    result = kdbench.sweep(tmp_path / "study.yaml", workers=2, max_visits=1, threads=1, device="cpu",
                           storage=f"sqlite:///{tmp_path / 'kd.db'}", cache_dir=tmp_path / "cache")
    runs = result.runs
    assert len(runs) == 2 and (runs["state"] == "complete").all()  # one visit per worker
    assert runs["visit"].nunique() == 2


def test_kdbench_sweep_is_the_api_before_and_after_the_sweep_package_is_imported() -> None:
    """``import kdbench`` stays light (the CLI's --help pays for no torch); ``kdbench.sweep`` is the API function
    until the package kdbench.sweep is imported, then that package, which calls the API."""
    import subprocess

    code = ("import sys, kdbench, kdbench.cli; light = 'torch' not in sys.modules; fn = kdbench.sweep; "
            "import kdbench.sweep.run; pkg = kdbench.sweep; "
            "print(light, fn.__module__, pkg.__name__, callable(pkg))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "kdbench.api", "kdbench.sweep", "True"]
    with pytest.raises(ConfigError, match="study: got a int"):
        importlib.import_module("kdbench.sweep")(42)  # the package calls the API


def test_an_untrained_module_as_teacher_is_below_the_floor_in_one_line(arrays: Any, tiny_study_dict: dict,
                                                                       tmp_path: Path) -> None:
    from kdbench.errors import TeacherTooWeakError
    from kdbench.store import Store

    raw = dict(_study(tiny_study_dict), teacher={})  # the default floor: chance + half of the rest (55 %)
    db = f"sqlite:///{tmp_path / 'kd.db'}"
    torch.manual_seed(0)
    with pytest.raises(TeacherTooWeakError) as err:
        kdbench.sweep(raw, teacher=Teacher(), student=_nets(tmp_path, "weak", NETS), data=arrays, storage=db,
                      device="cpu", threads=1, cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value) and "train it longer (the module given as teacher=)" in str(err.value)
    assert Store.open(db).studies().empty  # nothing registered
