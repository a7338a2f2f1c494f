"""kdbench.data: real files in the real formats (IDX, CIFAR pickles, PNG folders), no mocks."""

from __future__ import annotations

import gzip
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench.data import (
    AUGMENTS,
    DATASETS,
    REGISTRY,
    Data,
    DatasetInfo,
    DatasetSpec,
    Split,
    augment,
    files,
    load_data,
    load_raw,
    normalize,
    register_dataset,
    search_roots,
    stratified_split,
)
from kdbench.errors import ConfigError, DataNotFoundError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------------
# Writers for the real on-disk formats
# --------------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """Write ``array`` (uint8) as an IDX file: 0x00 0x00 0x08 <ndim>, big-endian uint32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_dataset(
    directory: Path, *, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tiny 28x28, 10-class IDX dataset with balanced labels; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
        arrays += [images, labels]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def write_pickle(path: Path, obj: dict[bytes, object]) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def no_system_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Search only what a test puts in place: no $KDBENCH_DATA, an empty cwd, no system datasets."""
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    empty_cwd = tmp_path / "cwd"
    empty_cwd.mkdir()
    monkeypatch.chdir(empty_cwd)
    monkeypatch.setattr(files, "SYSTEM_DATA_ROOT", tmp_path / "system")


# --------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw", "."])
def test_idx_round_trip(tmp_path: Path, no_system_data: None, gz: bool, layout: str) -> None:
    root = tmp_path / "root"
    train_x, train_y, test_x, test_y = make_idx_dataset(root / layout, gz=gz)
    info, train, test, found = load_raw("fashion-mnist", root=root)
    assert found == root
    assert info == DATASETS["fashion-mnist"]
    assert train.images.shape == (40, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous()
    assert np.array_equal(train.images[:, 0].numpy(), train_x)
    assert np.array_equal(train.labels.numpy(), train_y)
    assert np.array_equal(test.images[:, 0].numpy(), test_x)
    assert np.array_equal(test.labels.numpy(), test_y)


@pytest.mark.parametrize("layout", ["mnist", "MNIST/raw"])
def test_mnist_layouts(tmp_path: Path, no_system_data: None, layout: str) -> None:
    train_x, *_ = make_idx_dataset(tmp_path / layout, gz=False)
    info, train, _, _ = load_raw("mnist", root=tmp_path)
    assert info.name == "mnist" and info.mean == (0.1307,) and info.classes[3] == "3"
    assert np.array_equal(train.images[:, 0].numpy(), train_x)


def test_idx_bad_magic_names_the_file(tmp_path: Path, no_system_data: None) -> None:
    make_idx_dataset(tmp_path / "fashion-mnist", gz=False)
    bad = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(40))
    with pytest.raises(ConfigError, match=r"train-labels-idx1-ubyte.*not an IDX file"):
        load_raw("fashion-mnist", root=tmp_path)


def test_idx_truncated_file_is_an_error(tmp_path: Path, no_system_data: None) -> None:
    make_idx_dataset(tmp_path / "fashion-mnist", gz=False)
    path = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_raw("fashion-mnist", root=tmp_path)


def test_image_size_resizes_once_at_load(tmp_path: Path, no_system_data: None) -> None:
    make_idx_dataset(tmp_path / "fashion-mnist")
    info, train, test, _ = load_raw("fashion-mnist", root=tmp_path, image_size=32)
    assert info.image_size == 32
    assert train.images.shape == (40, 1, 32, 32) and test.images.shape == (20, 1, 32, 32)
    assert train.images.dtype == torch.uint8


# --------------------------------------------------------------------------------------------------
# CIFAR pickles
# --------------------------------------------------------------------------------------------------


def _flat_pixel(channel: int, row: int, col: int) -> int:
    """Offset of a pixel in a CIFAR row: 1024 red values, then green, then blue, each row-major 32x32."""
    return channel * 1024 + row * 32 + col


def test_cifar10_layout_and_chw_order(tmp_path: Path, no_system_data: None) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    for i in range(1, 6):
        rows = np.zeros((3, 3072), dtype=np.uint8)
        rows[0, _flat_pixel(1, 5, 7)] = 200 + i  # green, row 5, col 7 of the first image of batch i
        write_pickle(directory / f"data_batch_{i}", {b"data": rows, b"labels": [i, 0, 9]})
    test_rows = np.zeros((2, 3072), dtype=np.uint8)
    test_rows[1, _flat_pixel(2, 31, 0)] = 77  # blue, bottom-left
    write_pickle(directory / "test_batch", {b"data": test_rows, b"labels": [3, 4]})
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(directory / "batches.meta", {b"label_names": names})

    info, train, test, found = load_raw("cifar10", root=tmp_path)
    assert found == tmp_path and info.channels == 3 and info.num_classes == 10 and info.classes[9] == "truck"
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.labels.tolist() == [1, 0, 9, 2, 0, 9, 3, 0, 9, 4, 0, 9, 5, 0, 9]
    for i in range(5):
        image = train.images[3 * i]
        assert image[1, 5, 7] == 200 + i + 1
        assert int(image.count_nonzero()) == 1
    assert test.images[1, 2, 31, 0] == 77 and int(test.images.count_nonzero()) == 1


def test_cifar100_layout_and_fine_labels(tmp_path: Path, no_system_data: None) -> None:
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    train_rows = np.zeros((4, 3072), dtype=np.uint8)
    train_rows[2, _flat_pixel(0, 0, 31)] = 255  # red, top-right
    write_pickle(
        directory / "train",
        {b"data": train_rows, b"fine_labels": [0, 50, 99, 1], b"coarse_labels": [0, 1, 2, 3]},
    )
    write_pickle(directory / "test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [7, 8]})
    fine_names = [f"class{i}".encode() for i in range(100)]
    write_pickle(directory / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": []})

    info, train, test, _ = load_raw("cifar100", root=tmp_path)
    assert info.num_classes == 100 and info.classes[42] == "class42"
    assert train.labels.tolist() == [0, 50, 99, 1] and test.labels.tolist() == [7, 8]
    assert train.images[2, 0, 0, 31] == 255 and int(train.images.count_nonzero()) == 1


def test_builtin_class_names() -> None:
    assert DATASETS["fashion-mnist"].classes[0] == "T-shirt/top"
    assert DATASETS["fashion-mnist"].classes[9] == "Ankle boot"
    assert len(set(DATASETS["cifar100"].classes)) == 100
    assert DATASETS["cifar100"].classes[:3] == ("apple", "aquarium_fish", "baby")
    assert DATASETS["cifar100"].classes[-1] == "worm"


# --------------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------------


def make_imagefolder(
    folder: Path, classes: dict[str, int], *, split: str = "train", mode: str = "RGB"
) -> None:
    rng = np.random.default_rng(len(classes))
    for name, count in classes.items():
        (folder / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (20 + i, 30) if mode == "L" else (20 + i, 30, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(folder / split / name / f"{i:03d}.png")


def test_imagefolder_three_classes_resized(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, {"zebra": 5, "ant": 5, "moose": 5})
    make_imagefolder(tmp_path, {"ant": 2, "zebra": 1}, split="test")
    info, train, test, found = load_raw("imagefolder", root=tmp_path, image_size=16)
    assert found == tmp_path
    assert info.classes == ("ant", "moose", "zebra") and info.num_classes == 3
    assert info.channels == 3 and info.image_size == 16
    assert train.images.shape == (15, 3, 16, 16) and train.images.dtype == torch.uint8
    assert test.images.shape == (3, 3, 16, 16)
    assert sorted(test.labels.tolist()) == [0, 0, 2]
    assert torch.bincount(train.labels).tolist() == [5, 5, 5]
    pixels = train.images.double() / 255
    assert info.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist())
    assert info.std == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist())


def test_imagefolder_without_test_carves_a_stratified_seeded_test_set(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, {"a": 10, "b": 10}, mode="L")
    info, train, test, _ = load_raw("imagefolder", root=tmp_path)  # default size 32
    assert info.channels == 1 and train.images.shape[1:] == (1, 32, 32)
    assert len(train) == 16 and len(test) == 4
    assert torch.bincount(test.labels).tolist() == [2, 2]
    _, train_again, test_again, _ = load_raw("imagefolder", root=tmp_path)
    assert torch.equal(test.images, test_again.images) and torch.equal(train.images, train_again.images)


def test_imagefolder_mixed_gray_and_rgb_is_rgb(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, {"a": 3}, mode="L")
    make_imagefolder(tmp_path, {"b": 3}, mode="RGB")
    info, train, _, _ = load_raw("imagefolder", root=tmp_path, image_size=8)
    assert info.channels == 3
    gray_rows = train.images[train.labels == 0]
    assert torch.equal(gray_rows[:, 0], gray_rows[:, 1]) and torch.equal(gray_rows[:, 0], gray_rows[:, 2])


def test_imagefolder_one_class_is_an_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, {"only": 3})
    with pytest.raises(ConfigError, match="has 1 class; it needs at least 2 sub-folders, one per class"):
        load_raw("imagefolder", root=tmp_path)


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ConfigError, match=r"broken\.png cannot be read") as err:
        load_raw("imagefolder", root=tmp_path)
    assert "\n" not in str(err.value)


def test_imagefolder_needs_a_root_with_train(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.root"):
        load_raw("imagefolder")
    with pytest.raises(DataNotFoundError, match="no train/ folder"):
        load_raw("imagefolder", root=tmp_path)


# --------------------------------------------------------------------------------------------------
# Where files are looked for
# --------------------------------------------------------------------------------------------------


def test_search_roots_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    assert search_roots(tmp_path / "explicit") == [
        tmp_path / "explicit",
        tmp_path / "env",
        tmp_path / "data",
        files.SYSTEM_DATA_ROOT,
    ]
    monkeypatch.delenv("KDBENCH_DATA")
    assert search_roots(None) == [tmp_path / "data", files.SYSTEM_DATA_ROOT]


def test_first_root_that_holds_the_data_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system"
    monkeypatch.setattr(files, "SYSTEM_DATA_ROOT", system)
    cwd = tmp_path / "cwd"
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for i, root in enumerate((system, cwd / "data", env, explicit)):
        make_idx_dataset(root / "fashion-mnist", n_train=10, n_test=10, seed=i)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("KDBENCH_DATA", str(env))

    assert load_raw("fashion-mnist", root=explicit)[3] == explicit
    assert load_raw("fashion-mnist")[3] == env
    monkeypatch.delenv("KDBENCH_DATA")
    assert load_raw("fashion-mnist")[3] == cwd / "data"
    monkeypatch.chdir(tmp_path)
    assert load_raw("fashion-mnist")[3] == system
    # An explicit root without the data falls through to the next place.
    assert load_raw("fashion-mnist", root=tmp_path / "nothing-here")[3] == system


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_usr_share_datasets_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert search_roots(None)[-1] == REAL_FASHION.parent
    assert load_raw("fashion-mnist")[3] == REAL_FASHION.parent


def test_missing_data_lists_the_places_and_the_fixes(tmp_path: Path, no_system_data: None) -> None:
    explicit = tmp_path / "explicit"
    with pytest.raises(DataNotFoundError) as err:
        load_raw("fashion-mnist", root=explicit)
    message = str(err.value)
    assert "\n" not in message
    for place in (explicit / "fashion-mnist", explicit / "FashionMNIST" / "raw", tmp_path / "system"):
        assert str(place) in message
    assert str(tmp_path / "cwd" / "data" / "fashion-mnist") in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "$KDBENCH_DATA" in message and "data.download: true" in message
    assert isinstance(err.value, FileNotFoundError)


def test_partial_data_names_the_missing_files(tmp_path: Path, no_system_data: None) -> None:
    make_idx_dataset(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        load_raw("fashion-mnist", root=tmp_path)


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="'svhn' is unknown; use one of: fashion-mnist, mnist, cifar10"):
        load_data("svhn")


def test_a_dataset_registered_from_outside_is_one_record_and_loads(tmp_path: Path, no_system_data: None) -> None:
    """The registry opens: one DatasetSpec in a known format (here IDX, in a folder of its own) and the dataset
    is found, read, split and named in the messages like a built-in one."""
    info = DatasetInfo("tiny-idx", 1, 10, 28, (0.5,), (0.25,), tuple(f"c{i}" for i in range(10)))
    spec = DatasetSpec(info, "idx", REGISTRY["mnist"].files, ("tiny",), None, None)
    register_dataset(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_dataset(spec)
        with pytest.raises(DataNotFoundError) as err:
            load_raw("tiny-idx", root=tmp_path)
        assert str(tmp_path / "tiny") in str(err.value) and "apt-get" not in str(err.value)
        with pytest.raises(ConfigError, match="tiny-idx"):
            load_data("svhn")
        train_x, train_y, test_x, _ = make_idx_dataset(tmp_path / "tiny", n_train=60, n_test=20)
        data = load_data("Tiny_IDX", root=tmp_path, val_fraction=0.5, seed=1)
        assert data.info == DATASETS["tiny-idx"] == info
        assert (len(data.train), len(data.val), len(data.test)) == (30, 30, 20)
        assert torch.equal(data.test.images[:, 0], torch.from_numpy(test_x))
        assert torch.equal(data.train.images[:, 0], torch.from_numpy(train_x)[data.train_indices])
        assert torch.equal(data.train.labels, torch.from_numpy(train_y).long()[data.train_indices])
    finally:
        del REGISTRY["tiny-idx"]
    assert "tiny-idx" not in DATASETS
    with pytest.raises(ValueError, match="lower case"):
        register_dataset(DatasetSpec(DatasetInfo("Tiny_IDX", 1, 1, 28, (0.5,), (0.25,), ("a",)), "idx"))


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def test_stratified_split_is_proportional_exact_and_disjoint() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    taken, rest = stratified_split(labels, 0.1, seed=3)
    assert torch.bincount(labels[taken], minlength=3).tolist() == [5, 3, 2]
    assert torch.equal(torch.sort(torch.cat([taken, rest])).values, torch.arange(100))
    assert taken.dtype == torch.int64 and bool((taken[1:] > taken[:-1]).all())
    taken_count, _ = stratified_split(labels, 7, seed=3)
    assert len(taken_count) == 7  # largest remainder: 3.5, 2.1, 1.4 -> 4, 2, 1
    assert torch.bincount(labels[taken_count], minlength=3).tolist() == [4, 2, 1]
    assert torch.equal(stratified_split(labels, 0.1, seed=3)[0], taken)
    assert not torch.equal(stratified_split(labels, 0.1, seed=4)[0], taken)
    assert len(stratified_split(labels, 0.0, seed=0)[0]) == 0
    with pytest.raises(ConfigError):
        stratified_split(labels, 1.5, seed=0)
    with pytest.raises(ConfigError):
        stratified_split(labels, 101, seed=0)


def test_load_data_small(tmp_path: Path, no_system_data: None) -> None:
    make_idx_dataset(tmp_path / "fashion-mnist", n_train=200, n_test=30)
    d = load_data("fashion-mnist", root=tmp_path, val_fraction=0.1, subset=50, seed=1)
    assert isinstance(d, Data) and d.root == tmp_path and d.device == torch.device("cpu")
    assert (len(d.train), len(d.val), len(d.test)) == (50, 20, 30)
    assert torch.bincount(d.train.labels).tolist() == [5] * 10
    assert d.train_indices.dtype == torch.int64 and len(d.train_indices) == 50
    raw_train = load_raw("fashion-mnist", root=tmp_path)[1]
    assert torch.equal(d.train.images, raw_train.images[d.train_indices])

    no_val = load_data("fashion-mnist", root=tmp_path, val_fraction=0.0)
    assert len(no_val.val) == 0 and no_val.val.images.shape == (0, 1, 28, 28) and len(no_val.train) == 200

    with pytest.raises(ConfigError, match=r"data.subset=181 is more than the 180"):
        load_data("fashion-mnist", root=tmp_path, subset=181)
    with pytest.raises(ConfigError, match=r"data.subset=9 is fewer than the 10 classes"):
        load_data("fashion-mnist", root=tmp_path, subset=9)
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        load_data("fashion-mnist", root=tmp_path, val_fraction=1.0)


def test_split_to_and_len() -> None:
    split = Split(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.arange(3))
    moved = split.to("cpu")
    assert len(moved) == 3 and moved.images.device.type == "cpu" and "n=3" in repr(moved)
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.arange(4))


# --------------------------------------------------------------------------------------------------
# The real Fashion-MNIST
# --------------------------------------------------------------------------------------------------

needs_real = pytest.mark.skipif(not REAL_FASHION.is_dir(), reason=f"{REAL_FASHION} is absent")


@pytest.fixture(scope="module")
def real_raw() -> tuple[DatasetInfo, Split, Split]:
    info, train, test, _ = load_raw("fashion-mnist", root=REAL_FASHION.parent)
    return info, train, test


@pytest.fixture(scope="module")
def real_data() -> Data:
    return load_data("fashion-mnist", root=REAL_FASHION.parent, seed=0)


@needs_real
def test_real_fashion_mnist_raw(real_raw: tuple[DatasetInfo, Split, Split]) -> None:
    info, train, test = real_raw
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert info.num_classes == 10 and info.image_size == 28
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images[:10000].sum(dtype=torch.int64).item() / (10000 * 28 * 28 * 255)
    assert mean == pytest.approx(info.mean[0], abs=5e-3)


@needs_real
def test_real_fashion_mnist_val_split(real_data: Data) -> None:
    assert torch.bincount(real_data.val.labels).tolist() == [600] * 10
    assert torch.bincount(real_data.train.labels).tolist() == [5400] * 10
    assert len(real_data.test) == 10000


@needs_real
def test_real_fashion_mnist_split_determinism(real_raw: tuple[DatasetInfo, Split, Split]) -> None:
    labels = real_raw[1].labels
    val0, rest0 = stratified_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[val0]).tolist() == [600] * 10
    assert torch.equal(val0, stratified_split(labels, 0.1, seed=0)[0])
    assert not torch.equal(val0, stratified_split(labels, 0.1, seed=1)[0])
    assert len(np.intersect1d(val0.numpy(), rest0.numpy())) == 0


@needs_real
def test_real_fashion_mnist_subset(real_data: Data) -> None:
    d = load_data("fashion-mnist", root=REAL_FASHION.parent, subset=1000, seed=0)
    assert torch.bincount(d.train.labels).tolist() == [100] * 10
    assert torch.equal(d.val.labels, real_data.val.labels)  # the val carve-out does not depend on subset
    val_rows = set(stratified_split(load_raw("fashion-mnist")[1].labels, 0.1, seed=0)[0].tolist())
    assert val_rows.isdisjoint(d.train_indices.tolist())


@needs_real
def test_real_fashion_mnist_loads_fast() -> None:
    start = time.perf_counter()
    load_data("fashion-mnist", root=REAL_FASHION.parent)
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------------------------------
# normalize and augment
# --------------------------------------------------------------------------------------------------


def test_normalize_matches_the_formula() -> None:
    info = DATASETS["cifar10"]
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    out = normalize(images, info)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out, expected, atol=1e-6)
    assert normalize(images, info, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="channel"):
        normalize(images, DATASETS["mnist"])


def _batch(n: int = 64, c: int = 3, size: int = 12) -> torch.Tensor:
    # Values 1..255 so that the zero padding of a crop is distinguishable from content.
    return torch.randint(
        1, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(9)
    )


@pytest.mark.parametrize("kind", AUGMENTS)
def test_augment_shape_dtype_determinism(kind: str) -> None:
    images = _batch()
    out = augment(images, kind, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment(images, kind, torch.Generator().manual_seed(0)))
    if kind != "none":
        assert not torch.equal(out, augment(images, kind, torch.Generator().manual_seed(1)))


def test_augment_none_is_identity() -> None:
    images = _batch()
    assert augment(images, "none", torch.Generator()) is images


def test_augment_flip_flips_about_half() -> None:
    images = _batch()
    out = augment(images, "flip", torch.Generator().manual_seed(0))
    flipped = torch.tensor(
        [torch.equal(o, torch.flip(x, dims=(-1,))) for o, x in zip(out, images, strict=True)]
    )
    kept = torch.tensor([torch.equal(o, x) for o, x in zip(out, images, strict=True)])
    assert bool((flipped | kept).all())
    assert 10 < int(flipped.sum()) < 54
    assert torch.equal(out[flipped], torch.flip(images[flipped], dims=(-1,)))


def _window_offsets(out: torch.Tensor, images: torch.Tensor, *, allow_flip: bool) -> list[tuple[int, int]]:
    """For each sample, the (dy, dx) at which ``out`` is a window of the zero-padded input."""
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    size = images.shape[-1]
    offsets = []
    for o, p in zip(out, padded, strict=True):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            for window in (p[:, dy : dy + size, dx : dx + size],)
            if torch.equal(o, window) or (allow_flip and torch.equal(o, torch.flip(window, dims=(-1,))))
        ]
        assert hits, "augmented image is not a window of the padded image"
        offsets.append(hits[0])
    return offsets


def test_augment_crop_is_a_shifted_window_of_the_padded_image() -> None:
    images = _batch()
    out = augment(images, "crop", torch.Generator().manual_seed(0))
    offsets = _window_offsets(out, images, allow_flip=False)
    assert len(set(offsets)) > 10  # offsets differ per sample
    assert any(dy in (0, 8) or dx in (0, 8) for dy, dx in offsets)  # padding reaches the border


def test_augment_crop_and_flip() -> None:
    images = _batch()
    out = augment(images, "crop+flip", torch.Generator().manual_seed(0))
    _window_offsets(out, images, allow_flip=True)


def test_augment_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="'rotate' is unknown; use one of: none, flip, crop, crop\\+flip"):
        augment(_batch(), "rotate", torch.Generator())
