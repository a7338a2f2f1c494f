"""from_arrays and resize_images (kdbench/data/arrays.py) on hand-made arrays: layouts, statistics, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.data.arrays import from_arrays, image_layout, resize_images
from kdbench.errors import ConfigError


def test_the_three_layouts_give_the_same_nchw_images() -> None:
    nhwc = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    assert np.array_equal(image_layout(nhwc, "x"), nchw)
    assert np.array_equal(image_layout(nchw, "x"), nchw)
    nhw = nhwc[..., 0]
    assert image_layout(nhw, "x").shape == (2, 1, 4, 4) and np.array_equal(image_layout(nhw, "x")[:, 0], nhw)


def test_statistics_classes_and_tensors_by_hand() -> None:
    x = np.zeros((4, 2, 2), np.uint8)
    x[:2] = 255  # half white, half black: mean 0.5, std (unbiased) sqrt(16/15 * 0.25)
    info, train, test = from_arrays(x, [0, 1, 0, 1], x[:2], [1, 0], name="mine", classes=["a", "b"])
    assert (info.name, info.channels, info.num_classes, info.image_size, info.classes) == ("mine", 1, 2, 2,
                                                                                           ("a", "b"))
    assert info.mean[0] == pytest.approx(0.5) and info.std[0] == pytest.approx((16 / 15 * 0.25) ** 0.5)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 1, 0, 1]
    assert test.images.shape == (2, 1, 2, 2)
    info, _, _ = from_arrays(x, np.array([[0], [2], [1], [2]]), x, [2, 2, 0, 1])  # Keras' (N, 1) labels
    assert info.num_classes == 3 and info.classes == ("0", "1", "2")


@pytest.mark.parametrize(
    ("y_train", "y_test", "classes", "fragment"),
    [
        ([0, 1, 2, 1], [0, 1], ["a", "b"], "y_train: label 2 is out of range for 2 classes (a, b)"),
        ([0, 0, 0, 0], [0, 0], None, "the labels hold 1 class"),
        ([0, 1, 0, 1], [0, 2], None, "y_test has label(s) 2 that y_train never has"),
        (["a", "b", "a", "b"], [0, 1], None, "y_train: labels must be integers"),
    ],
)
def test_bad_labels_are_one_line(y_train: list, y_test: list, classes: list | None, fragment: str) -> None:
    x = np.zeros((4, 3, 3), np.uint8)
    with pytest.raises(ConfigError) as err:
        from_arrays(x, y_train, x[:2], y_test, classes=classes, source="mine")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_resize_keeps_a_constant_image_and_returns_the_same_tensor_at_its_size() -> None:
    images = torch.full((3, 1, 10, 10), 77, dtype=torch.uint8)
    out = resize_images(images, 6)
    assert out.shape == (3, 1, 6, 6) and out.dtype == torch.uint8 and bool((out == 77).all())
    assert resize_images(images, 10) is images
    _, train, test = from_arrays(np.zeros((2, 10, 14), np.uint8), [0, 1], np.zeros((2, 9, 9), np.uint8), [1, 0],
                                 image_size=8)
    assert train.images.shape == (2, 1, 8, 8) and test.images.shape == (2, 1, 8, 8)


def test_features_and_token_ids_are_other_inputs_kept_as_they_are() -> None:
    """Arrays that are not uint8 images: float features become float32, integer token ids int64, unnormalised;
    the info holds their shape and dtype, and a model is given exactly those inputs."""
    from kdbench.data import normalize

    feats = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -2.0]], np.float64)
    info, train, _ = from_arrays(feats, [0, 1], feats[:1], [1])
    assert (info.is_image, info.input_shape, info.input_dtype, info.channels, info.image_size) == \
        (False, (3,), "float32", 0, 0)
    assert train.images.dtype == torch.float32 and torch.equal(train.images, torch.tensor(feats, dtype=torch.float32))
    assert torch.equal(normalize(train.images, info), train.images)  # no statistics applied
    assert info.model_shape["input_shape"] == (3,) and info.model_shape["input_dtype"] == torch.float32
    assert info.example_batch(4).shape == (4, 3)

    tokens = np.array([[1, 2, 3, 0], [4, 4, 0, 0]], np.int32)
    info, train, _ = from_arrays(tokens, [1, 0], tokens, [1, 0])
    assert (info.input_shape, info.input_dtype) == ((4,), "int64") and train.images.dtype == torch.int64
    assert train.images.tolist() == tokens.tolist()
    assert normalize(train.images, info).dtype == torch.int64
    assert info.example_batch(2).dtype == torch.int64


@pytest.mark.parametrize(
    ("x_train", "x_test", "fragment"),
    [
        (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32),
         "x_train inputs are (3,) but x_test inputs are (4,)"),
        (np.zeros((2, 3), np.float32), np.zeros((2, 4, 4), np.uint8), "give both sets as uint8 images or both"),
        (np.array([[0.0, np.nan]], np.float32), np.zeros((1, 2), np.float32), "features hold NaN or infinite values"),
        (np.zeros(2, np.float32), np.zeros(2, np.float32), "inputs of shape (2,); give one row per sample"),
        (np.array([["a"], ["b"]]), np.array([["a"], ["b"]]), "<U1 inputs; give uint8 images, float features or"),
        (np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4, 3), np.float32),
         "x_train: images must be uint8 (0-255), got float32 (2, 4, 4, 3)"),
    ],
    ids=["other lengths", "images and features", "nan", "one axis", "strings", "float images"],
)
def test_bad_other_inputs_are_one_line(x_train: np.ndarray, x_test: np.ndarray, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_arrays(x_train, [0, 1][: len(x_train)], x_test, [0, 1][: len(x_test)])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_image_size_is_refused_for_other_inputs() -> None:
    with pytest.raises(ConfigError, match=r"data\.image_size applies to images"):
        from_arrays(np.zeros((2, 3), np.float32), [0, 1], np.zeros((2, 3), np.float32), [0, 1], image_size=8)
