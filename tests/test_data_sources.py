"""Data from outside the registry's formats (kdbench/data/sources.py): .npz files, Hugging Face data sets on disk
and torchvision's classes, each written here in its real format, read through load_raw / load_study_data."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kdbench.config import parse_study
from kdbench.data import load_data, load_raw, load_study_data
from kdbench.data.memory import available_bytes, check_fits, dataset_bytes
from kdbench.errors import ConfigError, DataNotFoundError


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _labels(n: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.arange(n) % classes if seed == 0 else np.random.default_rng(seed).integers(0, classes, n)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _digits(path: Path, shape: tuple[int, ...] = (12, 12), classes: int = 3) -> Path:
    return _npz(path, x_train=_images(30, shape), y_train=_labels(30, classes),
                x_test=_images(9, shape, 1), y_test=_labels(9, classes))


# ------------------------------------------------------------------------------------------------ npz


def test_npz_grayscale_reads_as_one_channel_with_its_statistics(tmp_path: Path) -> None:
    path = _digits(tmp_path / "d.npz")
    info, train, test, found = load_raw("npz", path=path)
    assert (info.name, info.channels, info.num_classes, info.image_size) == ("npz", 1, 3, 12)
    assert info.classes == ("0", "1", "2")
    assert train.images.shape == (30, 1, 12, 12) and test.images.shape == (9, 1, 12, 12)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    raw = np.load(path)
    assert torch.equal(train.images[:, 0], torch.from_numpy(raw["x_train"]))
    assert info.mean[0] == pytest.approx(raw["x_train"].mean() / 255, rel=1e-6)
    assert found == path


def test_npz_rgb_channels_last_is_resized_once_to_data_image_size(tmp_path: Path) -> None:
    path = _digits(tmp_path / "rgb.npz", shape=(20, 20, 3))
    info, train, test, _ = load_raw("npz", path=path, image_size=16)
    assert (info.channels, info.image_size) == (3, 16)
    assert train.images.shape == (30, 3, 16, 16) and test.images.shape == (9, 3, 16, 16)


def test_npz_non_square_needs_image_size(tmp_path: Path) -> None:
    path = _digits(tmp_path / "wide.npz", shape=(10, 14))
    with pytest.raises(ConfigError, match=r"10x14.*data.image_size"):
        load_raw("npz", path=path)
    info, train, _, _ = load_raw("npz", path=path, image_size=12)
    assert train.images.shape == (30, 1, 12, 12) and info.image_size == 12


def test_npz_fingerprint_is_of_the_arrays_not_the_file_name(tmp_path: Path) -> None:
    a = _digits(tmp_path / "a.npz")
    b = tmp_path / "b.npz"
    b.write_bytes(a.read_bytes())
    raw = dict(np.load(a))
    raw["y_test"] = raw["y_test"].copy()
    raw["y_test"][0] = (raw["y_test"][0] + 1) % 3
    c = _npz(tmp_path / "c.npz", **raw)
    prints = [load_data("npz", path=p, val_fraction=0.2).fingerprint for p in (a, b, c)]
    assert prints[0] == prints[1] != prints[2]
    assert len(prints[0]) == 16


def test_npz_path_is_relative_to_the_study_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    _digits(folder / "d.npz")
    monkeypatch.chdir(tmp_path)  # not the study's folder
    study = parse_study({"name": "s", "data": {"dataset": "npz", "path": "d.npz", "val_fraction": 0.2}})
    data = load_study_data(study.data, seed=0, folder=folder)
    assert len(data.train) + len(data.val) == 30 and len(data.test) == 9
    with pytest.raises(ConfigError, match=r"data.path '.*/d.npz': file not found"):
        load_study_data(study.data, seed=0)  # from the working directory, there is none


@pytest.mark.parametrize(
    ("arrays", "fragments"),
    [
        ({"x_train": _images(4, (8, 8)), "y_train": np.arange(4) % 2}, ("has no x_test, y_test", "x_train, y_train")),
        ({"x_train": _images(4, (8, 8)), "y_train": np.array([0, 1, 0.5, 1]), "x_test": _images(2, (8, 8)),
          "y_test": np.array([0, 1])}, ("y_train: labels must be integers", "float64")),
        ({"x_train": _images(4, (8, 8)), "y_train": np.array([0, 1, -1, 1]), "x_test": _images(2, (8, 8)),
          "y_test": np.array([0, 1])}, ("y_train: labels must be integers 0..classes-1, found -1",)),
        ({"x_train": _images(4, (8, 8)), "y_train": np.arange(4) % 2, "x_test": _images(2, (10, 10)),
          "y_test": np.array([0, 1])}, ("x_train images are (1, 8, 8)", "x_test images are (1, 10, 10)")),
        ({"x_train": _images(4, (8, 8)), "y_train": np.arange(4) % 2, "x_test": _images(2, (8, 8, 3)),
          "y_test": np.array([0, 1])}, ("give both sets the same channels",)),
        ({"x_train": np.zeros((4, 20), np.float32), "y_train": np.arange(4) % 2,
          "x_test": np.zeros((2, 21), np.float32), "y_test": np.array([0, 1])},
         ("x_train inputs are (20,) but x_test inputs are (21,)", "the same shape per input")),
        ({"x_train": _images(4, (8, 8)), "y_train": np.arange(4) % 2, "x_test": _images(2, (8, 8)),
          "y_test": np.array([0, 1, 1])}, ("y_test: labels of shape (3,) for 2 inputs",)),
        ({"x_train": _images(4, (8, 8)), "y_train": np.arange(4) % 2, "x_test": _images(2, (8, 8)),
          "y_test": np.array([0, 2])}, ("y_test has label(s) 2 that y_train never has",)),
    ],
    ids=["missing keys", "float labels", "negative label", "other size", "other channels", "features of other lengths",
         "label count", "other classes"],
)
def test_npz_bad_arrays_are_one_line(tmp_path: Path, arrays: dict, fragments: tuple[str, ...]) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError) as err:
        load_raw("npz", path=path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data.path {str(path)!r}")
    for fragment in fragments:
        assert fragment in message, message


def test_npz_not_a_zip_and_no_path(tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ConfigError, match=re.escape("is not a readable .npz file")):
        load_raw("npz", path=bad)
    with pytest.raises(ConfigError, match=re.escape("data.path: data.dataset npz reads data.path, which is not set")):
        load_raw("npz")
    with pytest.raises(ConfigError, match=re.escape("data.path applies to data.dataset npz and hf, not mnist")):
        load_raw("mnist", path=bad)


# ------------------------------------------------------------------------------------------------- hf


def _pil(n: int, size: tuple[int, int], mode: str, seed: int) -> list[Image.Image]:
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    return [Image.fromarray(a) for a in _images(n, shape, seed)]


def _hf_dict(train_sizes: tuple[int, int] = (10, 10), mode: str = "L") -> Any:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["cat", "dog", "owl"])})
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"img": _pil(6, train_sizes, mode, 0) + _pil(6, (10, 10), mode, 2),
                                             "fine": list(_labels(12, 3))},
                                            features=features),
        "test": datasets.Dataset.from_dict({"img": _pil(6, (10, 10), mode, 1), "fine": list(_labels(6, 3))},
                                           features=features),
    })


def test_hf_save_to_disk_reads_images_and_class_names(tmp_path: Path) -> None:
    _hf_dict().save_to_disk(str(tmp_path / "ds"))
    info, train, test, found = load_raw("hf", path=tmp_path / "ds", image_column="img", label_column="fine")
    assert (info.name, info.channels, info.image_size, info.classes) == ("hf", 1, 10, ("cat", "dog", "owl"))
    assert train.images.shape == (12, 1, 10, 10) and test.images.shape == (6, 1, 10, 10)
    assert torch.equal(train.images[0, 0], torch.from_numpy(_images(6, (10, 10), 0)[0]))
    assert train.labels.tolist() == list(_labels(12, 3))
    assert found == tmp_path / "ds"


def test_hf_parquet_folder_reads_the_same_as_save_to_disk(tmp_path: Path) -> None:
    ds = _hf_dict(mode="RGB")
    ds.save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "pq").mkdir()
    for split in ("train", "test"):
        ds[split].to_parquet(str(tmp_path / "pq" / f"{split}-00000-of-00001.parquet"))
    a = load_raw("hf", path=tmp_path / "disk", image_column="img", label_column="fine")
    b = load_raw("hf", path=tmp_path / "pq", image_column="img", label_column="fine")
    assert a[0] == b[0] and a[0].channels == 3
    assert torch.equal(a[1].images, b[1].images) and torch.equal(a[2].labels, b[2].labels)
    assert not list(tmp_path.glob("pq/cache-*")), "reading parquet wrote a cache file"


def test_hf_gray_and_colour_images_together_read_as_colour(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    gray, rgb = _pil(2, (6, 6), "L", 0), _pil(2, (6, 6), "RGB", 1)
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": [gray[0], rgb[0]], "label": [0, 1]}),
                               "test": datasets.Dataset.from_dict({"image": [gray[1], gray[0]], "label": [1, 0]})})
    ds.save_to_disk(str(tmp_path / "ds"))
    info, train, test, _ = load_raw("hf", path=tmp_path / "ds")
    assert info.channels == 3 and train.images.shape == (2, 3, 6, 6) and test.images.shape == (2, 3, 6, 6)
    assert torch.equal(train.images[0, 2], torch.from_numpy(np.array(gray[0])))  # gray repeated per channel
    assert torch.equal(train.images[1].permute(1, 2, 0), torch.from_numpy(np.array(rgb[0])))


def test_hf_images_of_several_sizes_need_image_size(tmp_path: Path) -> None:
    _hf_dict(train_sizes=(14, 14)).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match=r"data.image_size: .* has images of 2 sizes \(10x10, 14x14"):
        load_raw("hf", path=tmp_path / "ds", image_column="img", label_column="fine")
    info, train, test, _ = load_raw("hf", path=tmp_path / "ds", image_column="img", label_column="fine",
                                    image_size=8)
    assert info.image_size == 8 and train.images.shape == (12, 1, 8, 8) and test.images.shape == (6, 1, 8, 8)


def test_hf_bad_inputs_are_one_line(tmp_path: Path) -> None:
    _hf_dict().save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match=r"data.image_column: .* train has no column 'image'; its columns are img"):
        load_raw("hf", path=tmp_path / "ds", label_column="fine")
    with pytest.raises(ConfigError, match=r"data.label_column: .* has no column 'label'; its columns are img, fine"):
        load_raw("hf", path=tmp_path / "ds", image_column="img")
    with pytest.raises(ConfigError, match="folder not found"):
        load_raw("hf", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds neither a save_to_disk data set"):
        load_raw("hf", path=tmp_path / "empty")
    _hf_dict()["train"].save_to_disk(str(tmp_path / "one"))
    with pytest.raises(ConfigError, match="holds one Dataset, not a DatasetDict"):
        load_raw("hf", path=tmp_path / "one")


def test_hf_label_beyond_the_class_names_is_refused(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"image": _pil(4, (8, 8), "L", 0), "label": [0, 1, 0, 1]}, features=features)
        for split in ("train", "test")})
    ds["test"] = datasets.Dataset.from_dict({"image": _pil(2, (8, 8), "L", 0), "label": [0, -2]}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match=re.escape("y_test: labels must be integers 0..classes-1, found -2")):
        load_raw("hf", path=tmp_path / "ds")


# ---------------------------------------------------------------------------------------- torchvision


def _idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(head + array.astype(np.uint8).tobytes())


def _kmnist(root: Path) -> None:
    """KMNIST in torchvision's layout, <root>/KMNIST/raw/, as IDX files (torchvision does not md5-check them)."""
    raw = root / "KMNIST" / "raw"
    _idx(raw / "train-images-idx3-ubyte", _images(40, (28, 28)))
    _idx(raw / "train-labels-idx1-ubyte", _labels(40, 10))
    _idx(raw / "t10k-images-idx3-ubyte", _images(20, (28, 28), 1))
    _idx(raw / "t10k-labels-idx1-ubyte", _labels(20, 10))


def test_torchvision_kmnist_from_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "elsewhere"))
    _kmnist(tmp_path / "tv")
    info, train, test, _ = load_raw("torchvision:kmnist", root=tmp_path / "tv", image_size=16)
    assert (info.name, info.channels, info.num_classes, info.image_size) == ("torchvision:KMNIST", 1, 10, 16)
    assert info.classes[0] == "o"  # torchvision's class names
    assert train.images.shape == (40, 1, 16, 16) and test.images.shape == (20, 1, 16, 16)
    assert train.labels.tolist() == list(_labels(40, 10))
    native = load_raw("torchvision:KMNIST", root=tmp_path / "tv")[1]
    assert torch.equal(native.images[:, 0], torch.from_numpy(_images(40, (28, 28))))


def test_torchvision_items_read_one_by_one_where_there_is_no_data_array() -> None:
    """A class without a uint8 ``data`` array (Flowers102, DTD, ...) is read item by item, PIL image and class
    index, each resized as it is read: here torchvision's own FakeData (random images of a fixed seed)."""
    import torchvision.datasets as tvd

    from kdbench.data.sources import _torchvision_arrays

    sets = [tvd.FakeData(size=n, image_size=(3, 10, 12), num_classes=3, random_offset=o)
            for n, o in ((40, 0), (12, 99))]
    with pytest.raises(ConfigError, match="10x12; kdbench trains on square images"):
        _torchvision_arrays("torchvision:FakeData", sets, None)
    info, train, test = _torchvision_arrays("torchvision:FakeData", sets, 8)
    assert (info.channels, info.image_size, info.num_classes) == (3, 8, 3)
    assert train.images.shape == (40, 3, 8, 8) and test.images.shape == (12, 3, 8, 8)
    assert train.labels.tolist() == [sets[0][i][1] for i in range(40)]
    first = np.asarray(sets[0][0][0].resize((8, 8), Image.Resampling.BILINEAR))
    assert torch.equal(train.images[0].permute(1, 2, 0), torch.from_numpy(first.copy()))


def test_torchvision_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ConfigError, match=r"'torchvision:KMNST' is not a torchvision dataset; did you mean "
                                          r"torchvision:KMNIST"):
        load_raw("torchvision:KMNST")


def test_torchvision_files_missing_names_the_folder_and_download(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        load_raw("torchvision:KMNIST", root=tmp_path / "tv")
    message = str(err.value)
    assert "\n" not in message
    assert f"put its files in {tmp_path / 'tv' / 'KMNIST' / 'raw'}" in message
    assert "data.download: true" in message
    assert not (tmp_path / "tv").exists(), "a folder was created without data.download"


# -------------------------------------------------------------------------------------------- memory


def test_dataset_bytes_by_hand() -> None:
    # 70,000 images of 1x28x28 as uint8, int64 labels, and 10 float32 logits each
    assert dataset_bytes(70_000, 1, 28, 10) == 70_000 * (784 + 8 + 40)
    assert dataset_bytes(10, 3, 32) == 10 * (3 * 32 * 32 + 8)


def test_check_fits_refuses_more_than_the_host_has() -> None:
    free = available_bytes("cpu")
    if free is None:
        pytest.skip("no /proc/meminfo here")
    check_fits(1000, 1, 28, "cpu")
    n = free // (3 * 1024 * 1024) + 1  # one image more than fits
    with pytest.raises(ConfigError, match=r"data.image_size: .* need .* GiB but cpu has .* GiB free"):
        check_fits(n, 3, 1024, "cpu")


def test_an_image_size_that_cannot_fit_is_refused_before_allocating(needs_fmnist: None) -> None:
    need = dataset_bytes(70_000, 1, 1024)
    free = available_bytes("cpu")
    if free is None or free > need:
        pytest.skip(f"this machine has {free} bytes free: Fashion-MNIST at 1024x1024 ({need}) would fit")
    with pytest.raises(ConfigError, match=r"data.image_size: fashion-mnist, 70,000 images of 1x1024x1024"):
        load_raw("fashion-mnist", image_size=1024)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_is_asked_of_the_device(tmp_path: Path) -> None:
    """On CUDA the estimate is compared with torch.cuda.mem_get_info: an .npz goes whole to the GPU, and a
    size beyond the free device memory is refused before anything is moved."""
    free = available_bytes("cuda")
    assert free is not None and free == torch.cuda.mem_get_info()[0]
    data = load_data("npz", path=_digits(tmp_path / "d.npz"), val_fraction=0.2, device="cuda")
    assert data.train.images.is_cuda and data.test.labels.is_cuda
    with pytest.raises(ConfigError, match=r"data.image_size: .* GiB free"):
        check_fits(free // (3 * 1024 * 1024) + 1, 3, 1024, "cuda")


_OTHER_INPUT_NETS = '''
import torch
from torch import nn


class Features(nn.Module):
    """An MLP on feature vectors: told their shape by kdbench (input_shape=)."""

    def __init__(self, input_shape, num_classes, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class Tokens(nn.Module):
    """A bag of embeddings on token ids."""

    def __init__(self, num_classes, vocab=40, dim=8):
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.out(self.emb(x))
'''


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["features", "tokens"])
def test_a_sweep_and_report_on_inputs_that_are_not_images(tmp_path: Path, kind: str) -> None:
    """An .npz of float features (or integer token ids) and the user's own models make a full small sweep and a
    report through the CLI; the learnable signal is real (the teacher beats chance by far), the runs store it,
    and the report says why it draws no test images."""
    import subprocess
    import sys

    from kdbench.store import Store

    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        if kind == "features":
            x = rng.normal(size=(n, 12)).astype(np.float32)
            x[np.arange(n), y] += 3.0
        else:  # token y*10 .. y*10+9 marks the class among noise tokens 30..39
            x = rng.integers(30, 40, (n, 6))
            x[:, 0] = y * 10 + rng.integers(0, 10, n)
        return x, y

    (xtr, ytr), (xte, yte) = make(900), make(300)
    np.savez(tmp_path / "rows.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    (tmp_path / "nets.py").write_text(_OTHER_INPUT_NETS)
    model = "nets.py:Features" if kind == "features" else "nets.py:Tokens"
    study = {"name": "rows", "seed": 0, "data": {"dataset": "npz", "path": "rows.npz", "val_fraction": 0.2},
             "teacher": {"model": model, "epochs": 10, "batch_size": 64, "lr": 3.0e-2},
             "student": {"model": model, "model_args": {"hidden": 4} if kind == "features" else {"dim": 2},
                         "epochs": 1, "batch_size": 64},
             "search": {"temperature": [1, 4], "alpha": [0.5], "lr": [1.0e-3, 1.0e-2], "replicates": 1,
                        "pruner": "none", "lr_extend": 0},  # the data are under test here, not the lr's range
             "baseline": {"ce": True}, "finalists": {"top_k": 1, "seeds": 2}}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(study))
    db = f"sqlite:///{tmp_path / 'kd.db'}"

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    run("sweep", "rows.yaml", "--storage", db, "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
        "--device", "cpu", "--quiet")
    runs = Store.open(db).runs("rows")
    assert len(runs) == 10 and (runs["state"] == "complete").all()  # 2 KD cells + CE at 2 lr, 2 x (KD, CE)
    shown = run("show", "rows", "--storage", db)
    teacher_acc = float(re.search(r"teacher nets\.py:\w+: test ([\d.]+)%", shown).group(1))  # type: ignore[union-attr]
    assert teacher_acc > 60, shown  # three classes: chance is 33 %
    finals = runs[runs["kind"] == "finalist"]
    assert finals["test_acc"].notna().all()
    run("report", "rows", "--storage", db, "--out", str(tmp_path / "report"))
    html = (tmp_path / "report" / "index.html").read_text()
    assert "test images unavailable: the inputs are not images" in html  # the predictions figure says why


@pytest.mark.slow
def test_a_timm_student_on_an_hf_data_set_sweeps_and_reports_through_the_cli(tmp_path: Path) -> None:
    """A Hugging Face data set saved with ``datasets`` (RGB PIL images, a ClassLabel) and a timm student
    (timm's own small test ResNet, built by ``timm.create_model`` for 3 classes) make a full small sweep and a
    report through the CLI, the class names coming from the ClassLabel."""
    import subprocess
    import sys

    datasets = pytest.importorskip("datasets")
    pytest.importorskip("timm")
    from kdbench.store import Store

    rng = np.random.default_rng(0)

    def split(n: int) -> Any:  # class c: a bright square in one of three places, on noise
        labels = rng.integers(0, 3, n)
        images = []
        for c in labels:
            a = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            a[2 + 4 * c: 6 + 4 * c, 2:14] = 250
            images.append(Image.fromarray(a))
        features = datasets.Features({"image": datasets.Image(),
                                      "label": datasets.ClassLabel(names=["top", "middle", "bottom"])})
        return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)

    datasets.DatasetDict({"train": split(600), "test": split(150)}).save_to_disk(str(tmp_path / "shapes"))
    study = {"name": "shapes", "seed": 0, "data": {"dataset": "hf", "path": "shapes", "val_fraction": 0.2},
             "teacher": {"model": "cnn-s", "epochs": 3, "batch_size": 64, "lr": 3.0e-3},
             "student": {"model": "timm:test_resnet", "steps": 40, "batch_size": 32},
             "search": {"temperature": [1, 4], "alpha": [0.5], "lr": [1.0e-3, 3.0e-3], "replicates": 1,
                        "pruner": "none", "lr_extend": 0},
             "baseline": {"ce": True}, "finalists": {"top_k": 1, "seeds": 2}}
    (tmp_path / "shapes.yaml").write_text(yaml.safe_dump(study))
    db = f"sqlite:///{tmp_path / 'kd.db'}"

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    run("sweep", "shapes.yaml", "--storage", db, "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
        "--device", "cpu", "--quiet")
    runs = Store.open(db).runs("shapes")
    assert len(runs) == 10 and (runs["state"] == "complete").all()  # 2 KD cells + CE at 2 lr, 2 x (KD, CE)
    versions = runs["versions"].iloc[0]
    assert "timm:test_resnet" in str(versions), versions  # the student's fingerprint is stored with each run
    run("report", "shapes", "--storage", db, "--out", str(tmp_path / "report"))
    html = (tmp_path / "report" / "index.html").read_text()
    assert "timm:test_resnet" in html and "middle" in html  # the model; a ClassLabel name (test set read back)
