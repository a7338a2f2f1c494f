"""Every bad input, through the real `kdbench` CLI: exit 2, one `kdbench: error:` line naming the field,
file or value, no traceback, the store unchanged and nothing trained (the teacher cache stays empty)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from kdbench.cli import main
from kdbench.config import parse_study
from kdbench.models import build_model
from kdbench.store import SCHEMA_VERSION, MetaRow, Store


class Env:
    """A test's folder, its populated store and helpers to write inputs."""

    def __init__(self, tmp: Path, study: dict) -> None:
        self.tmp, self.study = tmp, study
        self.db = f"sqlite:///{tmp / 'kd.db'}"
        self.cache = tmp / "cache"

    def yaml(self, text: str | None = None, **changes: Any) -> str:
        """The tiny study with ``changes`` merged into its sections (or ``text`` verbatim) as a file."""
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.study.items()}
        for section, values in changes.items():
            if isinstance(raw.get(section), dict) and isinstance(values, dict):
                raw[section].update(values)
            else:
                raw[section] = values
        path = self.tmp / "study.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(raw))
        return str(path)

    def sweep(self, study_file: str, *extra: str, storage: str | None = None) -> list[str]:
        return ["sweep", study_file, "--storage", storage or self.db, "--quiet", "--device", "cpu",
                "--threads", "1", "--cache-dir", str(self.cache), *extra]

    def imagefolder(self, classes: int = 2, bad: bool = False) -> dict:
        """A tiny real image folder (4 gray 16x16 PNGs per class); ``bad`` adds a file that is no image."""
        root = self.tmp / "images"
        rng = np.random.default_rng(0)
        for c in range(classes):
            folder = root / "train" / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
        if bad:
            (root / "train" / "class0" / "broken.png").write_bytes(b"not a png")
        return {"dataset": "imagefolder", "root": str(root), "image_size": 16, "subset": None,
                "val_fraction": 0.25}

    def npz(self, **changes: Any) -> dict:
        """A tiny real .npz data file beside the study file (``changes`` replace or, as None, drop arrays)."""
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.integers(0, 255, (16, 12, 12), dtype=np.uint8), "y_train": np.arange(16) % 2,
                  "x_test": rng.integers(0, 255, (6, 12, 12), dtype=np.uint8), "y_test": np.arange(6) % 2}
        arrays.update(changes)
        np.savez(self.tmp / "digits.npz", **{k: v for k, v in arrays.items() if v is not None})
        return {"dataset": "npz", "path": "digits.npz", "subset": None, "val_fraction": 0.25}

    def hf(self) -> dict:
        """A tiny real Hugging Face DatasetDict saved with save_to_disk beside the study file."""
        datasets = pytest.importorskip("datasets")
        rng = np.random.default_rng(0)
        def split(n: int) -> Any:
            return datasets.Dataset.from_dict({"picture": [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8))
                                                           for _ in range(n)], "label": [i % 2 for i in range(n)]})
        datasets.DatasetDict({"train": split(8), "test": split(4)}).save_to_disk(str(self.tmp / "hfdata"))
        return {"dataset": "hf", "path": "hfdata", "subset": None, "val_fraction": 0.25}

    def nets(self, text: str) -> str:
        """A user's model file beside the study file; returns its name as a study writes it (relative)."""
        (self.tmp / "nets.py").write_text("import torch\nfrom torch import nn\n" + text)
        return "nets.py"

    def checkpoint(self, obj: object) -> str:
        path = self.tmp / "teacher.pt"
        torch.save(obj, path)
        return str(path)


def _cnn_s(classes: int) -> dict[str, torch.Tensor]:
    return build_model("cnn-s", in_channels=1, num_classes=classes, image_size=16).state_dict()


def _npz_stored_on_other_data(e: Env) -> list[str]:
    """The npz study 'arrays', stored with the same config from another .npz's arrays."""
    path = e.yaml(name="arrays", data=e.npz())
    study = parse_study(yaml.safe_load(Path(path).read_text()))
    Store.open(e.db).register_study(study, data="0123456789abcdef")
    return e.sweep(path)


def _too_big(e: Env) -> list[str]:
    """Fashion-MNIST at 1024x1024 (73 GB as uint8): refused before anything is allocated, where it cannot fit."""
    from kdbench.data.memory import available_bytes, dataset_bytes

    free, need = available_bytes("cpu"), dataset_bytes(70_000, 1, 1024)
    if free is None or free > need or not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip(f"Fashion-MNIST at 1024x1024 ({need} bytes) would fit in {free} free bytes, or it is absent")
    return e.sweep(e.yaml(data={"image_size": 1024}))


def _stored_on_other_data(e: Env) -> list[str]:
    """The image-folder study 'folders', stored with the same config from another folder's files."""
    path = e.yaml(name="folders", data=e.imagefolder())
    study = parse_study(yaml.safe_load(Path(path).read_text()))
    Store.open(e.db).register_study(study, data="0123456789abcdef")
    return e.sweep(path)


def _sql(e: Env, *statements: str) -> None:
    """Change the env's database behind kdbench's back, as a damaged file or another tool would."""
    engine = sa.create_engine(e.db)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


def _damaged_version(e: Env) -> None:
    _sql(e, "UPDATE kdbench_meta SET value = 'two' WHERE key = 'schema_version'")


def _no_meta_table(e: Env) -> None:
    _sql(e, "DROP TABLE kdbench_meta")


def _newer_store(e: Env) -> None:
    with Store.open(e.db).session() as s:
        s.execute(sa.update(MetaRow).where(MetaRow.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))


# id -> (prepare the inputs and return the CLI arguments, fragments the one-line message must contain)
CASES: dict[str, tuple[Callable[[Env], list[str]], tuple[str, ...]]] = {
    "malformed YAML": (lambda e: e.sweep(e.yaml("name: x\nsearch: {alpha: [0.5\n")),
                       ("study.yaml: malformed YAML at line",)),
    "not a mapping": (lambda e: e.sweep(e.yaml("- name\n- x\n")), ("must be a YAML mapping",)),
    "study file missing": (lambda e: e.sweep(str(e.tmp / "nope.yaml")), ("nope.yaml: study file not found",)),
    "unknown key": (lambda e: e.sweep(e.yaml(serach={})), ("unknown key 'serach'",)),
    "unknown nested key": (lambda e: e.sweep(e.yaml(student={"epoch": 2})), ("unknown key 'student.epoch'",)),
    "unknown --set key": (lambda e: e.sweep(e.yaml(), "--set", "teacher.lr_max=1"),
                          ("unknown key 'teacher.lr_max'",)),
    "--set without =": (lambda e: e.sweep(e.yaml(), "--set", "student.epochs"), ("expected KEY=VALUE",)),
    "wrong type": (lambda e: e.sweep(e.yaml(student={"epochs": "three"})), ("student.epochs", "integer")),
    "wrong section type": (lambda e: e.sweep(e.yaml(search=[1, 2])), ("search:", "dictionary")),
    "alpha above 1": (lambda e: e.sweep(e.yaml(search={"alpha": [0.5, 1.5]})), ("search.alpha", "[0, 1]")),
    "alpha range below 0": (lambda e: e.sweep(e.yaml(search={"alpha": {"low": -0.1, "high": 0.5}})),
                            ("search.alpha", "[0, 1]")),
    "T = 0": (lambda e: e.sweep(e.yaml(search={"temperature": [0, 2]})), ("search.temperature", "> 0")),
    "T < 0 by --set": (lambda e: e.sweep(e.yaml(), "--set", "search.temperature=[-1]"),
                       ("search.temperature", "> 0")),
    "empty grid": (lambda e: e.sweep(e.yaml(search={"alpha": []})), ("search.alpha: is empty",)),
    "lr low > high": (lambda e: e.sweep(e.yaml(search={"lr": {"low": 1e-2, "high": 1e-3}})),
                      ("search.lr: low (0.01) is greater than high (0.001); swap them",)),
    "unsafe study name": (lambda e: e.sweep(e.yaml(name="../../etc/x")),
                          ("name: not a safe file name", "'../../etc/x'")),
    "study name with a space": (lambda e: e.sweep(e.yaml(), "--set", "name=my study"), ("not a safe file name",)),
    "study name ending .ce": (lambda e: e.sweep(e.yaml(name="tiny.ce")), ("ends in '.ce'",)),
    "study name ending .dkd": (lambda e: e.sweep(e.yaml(name="tiny.dkd")), ("ends in '.dkd'",)),
    "unknown method": (lambda e: e.sweep(e.yaml(search={"method": ["kd", "crd"]})),
                       ("search.method", "unknown method 'crd'", "kd, dkd, dist, lskd")),
    "a parameter given to the wrong method": (
        lambda e: e.sweep(e.yaml(search={"method": ["kd", "dkd"], "spaces": {"dkd": {"inter_weight": [1, 2]}}})),
        ("search.spaces.dkd.inter_weight", "a parameter of dist", "dkd takes")),
    "a negative method weight": (
        lambda e: e.sweep(e.yaml(search={"method": ["dkd"], "spaces": {"dkd": {"nckd_weight": [8, -1]}}})),
        ("search.spaces.dkd.nckd_weight", ">= 0")),
    "a space for a method not in search.method": (
        lambda e: e.sweep(e.yaml(search={"spaces": {"lskd": {"kd_weight": [9]}}})),
        ("search.spaces.lskd", "not in search.method")),
    "alpha and the weights together": (
        lambda e: e.sweep(e.yaml(search={"method": ["lskd"], "spaces": {"lskd": {"alpha": [0.5], "kd_weight": [9]}}})),
        ("search.spaces.lskd", "not both")),
    "a warm-up given as a grid": (
        lambda e: e.sweep(e.yaml(search={"method": ["dkd"], "spaces": {"dkd": {"kd_warmup_epochs": [0, 20]}}})),
        ("search.spaces.dkd.kd_warmup_epochs", "one number of epochs")),
    "methods on unequal budgets": (
        lambda e: e.sweep(e.yaml(search={"method": ["kd", "dkd"], "temperature": [2, 4], "alpha": [0.5],
                                         "spaces": {"dkd": {"temperature": [4]}}})),
        ("search.method", "kd: 2, dkd: 1 cells", "same tuning budget")),
    "unknown dataset": (lambda e: e.sweep(e.yaml(data={"dataset": "svhn"})), ("data.dataset 'svhn' is unknown",
                                                                              "data.dataset: torchvision:SVHN")),
    "unknown dataset, not torchvision's either": (lambda e: e.sweep(e.yaml(data={"dataset": "svhnx"})),
                                                  ("data.dataset 'svhnx' is unknown", "or torchvision:NAME")),
    "npz missing a key": (lambda e: e.sweep(e.yaml(data=e.npz(y_test=None))),
                          ("digits.npz' has no y_test (it holds: x_train, y_train, x_test)",)),
    "npz labels not integers": (lambda e: e.sweep(e.yaml(data=e.npz(y_train=np.linspace(0, 1, 16)))),
                                ("digits.npz' y_train: labels must be integers 0..classes-1, got float64",)),
    "npz labels out of range": (lambda e: e.sweep(e.yaml(data=e.npz(y_test=np.array([0, 1, 0, 1, -3, 1])))),
                                ("y_test: labels must be integers 0..classes-1, found -3",)),
    "npz train and test of other sizes": (
        lambda e: e.sweep(e.yaml(data=e.npz(x_test=np.zeros((6, 10, 10), np.uint8)))),
        ("x_train images are (1, 12, 12) (C, H, W) but x_test images are (1, 10, 10)", "data.image_size")),
    "npz train and test of other classes": (lambda e: e.sweep(e.yaml(data=e.npz(y_test=np.arange(6) % 3))),
                                            ("y_test has label(s) 2 that y_train never has",)),
    "npz of features for a zoo model": (
        lambda e: e.sweep(e.yaml(data=e.npz(x_train=np.zeros((16, 5), np.float32),
                                            x_test=np.zeros((6, 5), np.float32)))),
        ("teacher.model: model 'cnn-s' takes images, but the data are inputs of shape (5,)", "file.py:Class")),
    "npz of features with augmentation": (
        lambda e: e.sweep(e.yaml(data=dict(e.npz(x_train=np.zeros((16, 5), np.float32),
                                                 x_test=np.zeros((6, 5), np.float32)), augment="flip"))),
        ("data.augment: 'flip' moves pixels", "not images (torch.float32 (5,) each)", "data.augment: none")),
    "npz of token ids with an image size": (
        lambda e: e.sweep(e.yaml(data=dict(e.npz(x_train=np.zeros((16, 7), np.int32),
                                                 x_test=np.zeros((6, 7), np.int32)), image_size=32))),
        ("data.image_size applies to images", "int32 inputs (7,)", "remove data.image_size")),
    "npz of images in one set and features in the other": (
        lambda e: e.sweep(e.yaml(data=e.npz(x_test=np.zeros((6, 5), np.float32)))),
        ("x_train is uint8 (16, 12, 12) but x_test is float32 (6, 5)", "both as features/token ids")),
    "npz file missing": (lambda e: e.sweep(e.yaml(data={"dataset": "npz", "path": "gone.npz"})),
                         ("data.path", "gone.npz': file not found",)),
    "npz without data.path": (lambda e: e.sweep(e.yaml(data={"dataset": "npz"})),
                              ("data.path: data.dataset npz reads data.path, which is not set; give the .npz file",)),
    "hf column missing": (lambda e: e.sweep(e.yaml(data=e.hf())),
                          ("data.image_column:", "train has no column 'image'; its columns are picture, label")),
    "hf folder missing": (lambda e: e.sweep(e.yaml(data={"dataset": "hf", "path": "nowhere"})),
                          ("nowhere': folder not found",)),
    "unknown torchvision dataset": (
        lambda e: e.sweep(e.yaml(data={"dataset": "torchvision:SVHM"})),
        ("'torchvision:SVHM' is not a torchvision dataset; did you mean torchvision:SVHN",)),
    "torchvision files missing": (
        lambda e: e.sweep(e.yaml(data={"dataset": "torchvision:KMNIST", "root": str(e.tmp / "tv")})),
        ("torchvision:KMNIST not found", f"{Path('tv') / 'KMNIST' / 'raw'}", "data.download: true")),
    "data that cannot fit in memory": (_too_big, ("data.image_size: fashion-mnist, 70,000 images of 1x1024x1024",
                                                  "GiB free", "smaller data.image_size")),
    "unknown teacher model": (lambda e: e.sweep(e.yaml(data=e.imagefolder(), teacher={"model": "cnn-xl"})),
                              ("teacher.model: unknown model 'cnn-xl'",)),
    "unknown student model": (lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": "mlp-9"})),
                              ("student.model: unknown model 'mlp-9'",)),
    "data files missing": (lambda e: e.sweep(e.yaml(data={"dataset": "mnist", "root": str(e.tmp / "none")})),
                           ("mnist not found; looked in", "none", "KDBENCH_DATA", "data.download: true")),
    "imagefolder with one class": (lambda e: e.sweep(e.yaml(data=e.imagefolder(classes=1))),
                                   ("has 1 class", "at least 2")),
    "imagefolder unreadable image": (lambda e: e.sweep(e.yaml(data=e.imagefolder(bad=True))),
                                     ("broken.png cannot be read", "replace or delete it")),
    "checkpoint missing": (lambda e: e.sweep(e.yaml(data=e.imagefolder(), teacher={"checkpoint": "no.pt"})),
                           ("teacher.checkpoint:", "no.pt does not exist")),
    "checkpoint not a state dict": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), teacher={"checkpoint": e.checkpoint([1, 2, 3])})),
        ("teacher.checkpoint:", "holds a list, not a dict of tensors")),
    "checkpoint wrong class count": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), teacher={"checkpoint": e.checkpoint(_cnn_s(3))})),
        ("teacher.checkpoint:", "teacher.pt")),
    "checkpoint refused by weights_only": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), teacher={"checkpoint": e.checkpoint(torch.nn.Linear(2, 2))})),
        ("teacher.checkpoint:", "weights_only=True refused it")),
    "student pretrained wrong model": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"pretrained": e.checkpoint(_cnn_s(2))})),
        ("student.pretrained:", "keys")),
    "study reused with another config": (lambda e: e.sweep(e.yaml(name="stored"), "--set", "student.epochs=2"),
                                         ("study 'stored'", "another config", "--set name=stored-2", "--replace")),
    "study reused on other data (same config, other image folder)": (
        _stored_on_other_data, ("study 'folders'", "was run on other data", "--set name=folders-2", "--replace")),
    "study reused on other data (same config, another .npz)": (
        _npz_stored_on_other_data, ("study 'arrays'", "was run on other data", "--set name=arrays-2")),
    "--replace with an unknown student model": (
        lambda e: e.sweep(e.yaml(name="stored", data=e.imagefolder(), student={"model": "mlp-9"}), "--replace"),
        ("student.model: unknown model 'mlp-9'",)),
    "--replace with data files missing": (
        lambda e: e.sweep(e.yaml(name="stored", data={"dataset": "mnist", "root": str(e.tmp / "none")}), "--replace"),
        ("mnist not found",)),
    "val_fraction 0": (lambda e: e.sweep(e.yaml(data={**e.imagefolder(), "val_fraction": 0})),
                       ("data.val_fraction: 0 leaves no validation set", "0.1")),
    "study name ending in a newline": (lambda e: e.sweep(e.yaml(name="tiny\n")), ("not a safe file name",)),
    "YAML alias bomb": (lambda e: e.sweep(e.yaml("name: x\na: &a [lol, lol]\nb: &b [*a, *a]\nc: [*b, *b]\n")),
                        ("study.yaml: malformed YAML at line 3", "aliases (*name) are not allowed")),
    "cache views without augmentation": (lambda e: e.sweep(e.yaml(teacher={"cache": {"views": 2}})),
                                         ("teacher.cache: {views: 2} caches augmented views", "data.augment is none")),
    "absurd epochs": (lambda e: e.sweep(e.yaml(), "--set", "student.epochs=1000000000000"),
                      ("student.epochs", "less than or equal to 10000")),
    "absurd batch size": (lambda e: e.sweep(e.yaml(teacher={"batch_size": 10**9})),
                          ("teacher.batch_size", "less than or equal to 65536")),
    "--set with an empty key": (lambda e: e.sweep(e.yaml(), "--set", "..=1"), ("'..' has an empty part",)),
    "user model file missing": (lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": "gone.py:Net"})),
                                ("model 'gone.py:Net': file", "gone.py not found")),
    "user model does not import": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": e.nets("import no_such_pkg\n") + ":Net"})),
        ("student.model: model 'nets.py:Net': importing nets.py failed: ModuleNotFoundError",)),
    "user model not callable": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": e.nets("Net = 3\n") + ":Net"})),
        ("Net is a int, not a class or factory",)),
    "user model name missing": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": e.nets("") + ":Net"})),
        ("nets.py has no 'Net'",)),
    "user model returns the wrong shape": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": e.nets(
            "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.fc = nn.Linear(256, 3)\n    def forward(self, x):\n        return self.fc(x.flatten(1))\n")
            + ":Net"})),
        ("returned (2, 3) for a [2, 1, 16, 16] batch; it must return [batch, classes] = (2, 2) logits",)),
    "user factory returns no module": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": e.nets("def make():\n    return [1]\n")
                                                                          + ":make"})),
        ("built a list, not a torch.nn.Module",)),
    "user model_args refused": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": e.nets(
            "class Net(nn.Module):\n    def __init__(self, width):\n        super().__init__()\n") + ":Net",
            "model_args": {"depth": 3}})),
        ("Net(**model_args) raised TypeError",)),
    "unknown torchvision model": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": "torchvision:resnt18"})),
        ("'torchvision:resnt18' is not a torchvision classifier; did you mean resnet18",)),
    "unknown torchvision weights": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": "torchvision:resnet18", "weights": "V9"})),
        ("weights: 'V9' is not one of torchvision:resnet18's: DEFAULT, IMAGENET1K_V1",)),
    "torchvision weights not in the cache, offline": (
        lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": "torchvision:resnet18",
                                                                 "weights": "IMAGENET1K_V1"})),
        ("hub/checkpoints/resnet18-f37072fd.pth not found and kdbench never downloads",
         "https://download.pytorch.org/models/resnet18-f37072fd.pth")),
    "unknown timm model": (lambda e: e.sweep(e.yaml(data=e.imagefolder(), student={"model": "timm:resnet18x"})),
                           ("'timm:resnet18x' is not a timm model; did you mean",)),
    "weights on a zoo model": (lambda e: e.sweep(e.yaml(student={"model": "mlp-800", "weights": "DEFAULT"})),
                               ("weights and model_args apply to torchvision:, timm: and your own models",)),
    "more probes than configurations left": (lambda e: e.sweep(e.yaml(), "--set", "finalists.probe=99"),
                                             ("finalists.probe: 99 probes", "set finalists.probe to at most")),
    "unreachable PostgreSQL": (lambda e: e.sweep(e.yaml(), storage="postgresql+psycopg://nobody@127.0.0.1:1/x"),
                               ("--storage postgresql+psycopg://nobody@127.0.0.1:1/x: cannot open", "server")),
    "password not shown": (lambda e: e.sweep(e.yaml(), storage="postgresql+psycopg://u:secret@127.0.0.1:1/x"),
                           ("u:***@127.0.0.1:1",)),
    "SQLite folder missing": (lambda e: e.sweep(e.yaml(), storage="sqlite:////nonexistent/dir/x.db"),
                              ("--storage sqlite:////nonexistent/dir/x.db: cannot open", "folder that exists")),
    "not a database": (lambda e: e.sweep(e.yaml(), storage=f"sqlite:///{_garbage(e)}"), ("not.db: cannot open",)),
    "not a URL": (lambda e: e.sweep(e.yaml(), storage="kdbench.db"), ("not a usable SQLAlchemy URL", "sqlite:///")),
    "database from a newer kdbench (sweep)": (lambda e: (_newer_store(e), e.sweep(e.yaml()))[1],
                                              ("newer kdbench", "upgrade kdbench")),
    "database from a newer kdbench (ls)": (lambda e: (_newer_store(e), ["ls", "--storage", e.db])[1],
                                           ("newer kdbench",)),
    "database from a newer kdbench (show)": (lambda e: (_newer_store(e), ["show", "stored", "--storage", e.db])[1],
                                             ("newer kdbench",)),
    "schema version not a number (ls)": (
        lambda e: (_damaged_version(e), ["ls", "--storage", e.db])[1],
        ("damaged kdbench database", "(kdbench_meta.schema_version) is 'two', not a number", "restore it from a backup",
         f"UPDATE kdbench_meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'")),
    "schema version not a number (show)": (
        lambda e: (_damaged_version(e), ["show", "stored", "--storage", e.db])[1],
        ("damaged kdbench database", "is 'two', not a number", "repair the row")),
    "schema version not a number (sweep)": (lambda e: (_damaged_version(e), e.sweep(e.yaml()))[1],
                                            ("damaged kdbench database", "is 'two', not a number")),
    "kdbench tables without kdbench_meta (ls)": (
        lambda e: (_no_meta_table(e), ["ls", "--storage", e.db])[1],
        ("damaged kdbench database", "holds kdbench's tables (kdbench_epochs, kdbench_runs, kdbench_studies, "
         "kdbench_teachers) but not kdbench_meta, which records their schema version", "restore it from a backup",
         f"INSERT INTO kdbench_meta VALUES ('schema_version', '{SCHEMA_VERSION}')")),
    "kdbench tables without kdbench_meta (show)": (
        lambda e: (_no_meta_table(e), ["show", "stored", "--storage", e.db])[1],
        ("damaged kdbench database", "but not kdbench_meta", "CREATE TABLE kdbench_meta")),
    "kdbench tables without kdbench_meta (sweep)": (lambda e: (_no_meta_table(e), e.sweep(e.yaml()))[1],
                                                    ("damaged kdbench database", "but not kdbench_meta")),
    "show an unknown study": (lambda e: ["show", "nope", "--storage", e.db], ("no study named 'nope'", "stored")),
    "cache folder not writable": (lambda e: e.sweep(e.yaml(), "--cache-dir", f"{_garbage(e)}/sub"),
                                  ("--cache-dir", "cannot write there")),
    "teacher command, bad checkpoint": (
        lambda e: ["teacher", e.yaml(data=e.imagefolder(), teacher={"checkpoint": e.checkpoint([1])}),
                   "--device", "cpu", "--cache-dir", str(e.cache)],
        ("teacher.checkpoint:", "holds a list")),
}


def _garbage(e: Env) -> Path:
    path = e.tmp / "not.db"
    path.write_bytes(b"this is not a database file, not even close" * 100)
    return path


def _row_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        counts = {n: conn.execute(sa.text(f'SELECT COUNT(*) FROM "{n}"')).scalar_one() for n in names}
    engine.dispose()
    return counts


@pytest.fixture
def env(tmp_path: Path, tiny_study_dict: dict, monkeypatch: pytest.MonkeyPatch) -> Env:
    """A store that already holds a study, 'stored' (kdbench's rows and Optuna's), as users' stores do."""
    monkeypatch.chdir(tmp_path)  # ./data and ./.kdbench-cache are the test's own
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "no-data-here"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # torchvision's weights cache: empty
    e = Env(tmp_path, tiny_study_dict)
    Store.open(e.db).register_study(parse_study({**tiny_study_dict, "name": "stored"}))
    optuna.create_study(storage=Store.open(e.db).optuna_storage(), study_name="stored")
    return e


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case: str, env: Env) -> None:
    prepare, fragments = CASES[case]
    args = prepare(env)
    before = _row_counts(env.db)
    result = CliRunner().invoke(main, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, f"{case}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    assert _row_counts(env.db) == before
    assert not (env.cache / "teachers").exists(), "a teacher was trained or loaded before the error"


def test_a_refused_sweep_creates_no_database(env: Env) -> None:
    """A new database named by --storage is not created when the input is refused (here: missing data)."""
    path = env.tmp / "fresh.db"
    args = env.sweep(env.yaml(data={"dataset": "mnist", "root": str(env.tmp / "none")}), storage=f"sqlite:///{path}")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "mnist not found" in result.stderr
    assert not path.exists()


def test_a_foreign_database_is_refused_before_any_write(env: Env) -> None:
    """An SQLite file of another application (with a `studies` table, as Optuna has one) is left untouched."""
    path = env.tmp / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE studies (id INTEGER PRIMARY KEY, title TEXT)"))
        conn.execute(sa.text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    before = _row_counts(f"sqlite:///{path}")
    result = CliRunner().invoke(main, env.sweep(env.yaml(), storage=f"sqlite:///{path}"))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a kdbench database" in lines[0] and "invoices" in lines[0], lines
    assert _row_counts(f"sqlite:///{path}") == before  # no table added
    assert not (env.cache / "teachers").exists()


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a file system mounted read-only (a tmpfs remounted ro): what a results archive, another
    user's share or a container's read-only volume is. Root may write any file, so chmod would prove nothing."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_commands_read_a_database_they_may_not_write(env: Env, read_only_folder: Path) -> None:
    """ls and show open a read-only SQLite file read-only (mode=ro) and change nothing; its write-ahead log,
    copied with it (a snapshot taken while a sweep ran), is read too."""
    copied = sorted(p.name for p in env.tmp.glob("kd.db*"))  # kd.db, -wal, -shm: the env's stores are open
    for name in copied:
        shutil.copy(env.tmp / name, read_only_folder / name)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_folder)], check=True)
    url = f"sqlite:///{read_only_folder / 'kd.db'}"
    as_is = f"sqlite:///file:{read_only_folder / 'kd.db'}?mode=ro&immutable=1&uri=true"  # the test's own reader
    before = _row_counts(as_is)
    for args in (["ls"], ["show", "stored"]):
        result = CliRunner().invoke(main, [*args, "--storage", url])
        assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
        assert "stored" in result.output
    result = CliRunner().invoke(main, ["show", "nope", "--storage", url])
    assert result.exit_code == 2 and "no study named 'nope'" in result.stderr
    assert _row_counts(as_is) == before
    assert sorted(p.name for p in read_only_folder.iterdir()) == copied


def test_a_read_only_database_of_an_older_schema_is_one_line(env: Env, read_only_folder: Path) -> None:
    engine = sa.create_engine(env.db)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE kdbench_studies DROP COLUMN data_fingerprint"))
        conn.execute(sa.update(MetaRow).where(MetaRow.key == "schema_version").values(value="1"))
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # all in kd.db: a closed, archived database
    engine.dispose()
    shutil.copy(env.tmp / "kd.db", read_only_folder / "kd.db")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_folder)], check=True)
    result = CliRunner().invoke(main, ["ls", "--storage", f"sqlite:///{read_only_folder / 'kd.db'}"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "older kdbench (schema 1" in lines[0] and "read-only here" in lines[0]


# a study row's config column, damaged -> what the one line must say of it
DAMAGED_CONFIGS = {
    "not JSON": ('{"name": "stored", "seed": ', ("study 'stored'", "its stored config is not JSON (Expecting value")),
    "JSON that is not a study": ('{"name": "stored", "student": {"epochs": "three"}}',
                                 ("study 'stored'", "its stored config is not a study this kdbench reads",
                                  "student.epochs")),
    "JSON that is no object": ("[1, 2]", ("study 'stored'", "its stored config is JSON but not an object of keys")),
}


@pytest.mark.parametrize("damage", list(DAMAGED_CONFIGS))
def test_ls_lists_a_study_whose_stored_config_is_damaged(damage: str, env: Env) -> None:
    """ls reads no config: it still lists every study, the damaged one too."""
    _sql(env, f"UPDATE kdbench_studies SET config = '{DAMAGED_CONFIGS[damage][0]}' WHERE name = 'stored'")
    result = CliRunner().invoke(main, ["ls", "--storage", env.db])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert "stored" in result.output and result.stderr == ""


@pytest.mark.parametrize("damage", list(DAMAGED_CONFIGS))
def test_show_names_a_study_whose_stored_config_is_damaged(damage: str, env: Env) -> None:
    config, fragments = DAMAGED_CONFIGS[damage]
    _sql(env, f"UPDATE kdbench_studies SET config = '{config}' WHERE name = 'stored'")
    before = _row_counts(env.db)
    result = CliRunner().invoke(main, ["show", "stored", "--storage", env.db])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("kdbench: error: "), result.stderr
    for fragment in (*fragments, "kdbench sweep ... --replace", "restore the database from a backup"):
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"
    assert _row_counts(env.db) == before
