from __future__ import annotations

import time

import pytest
import torch

from kdbench.config import parse_study
from kdbench.errors import TeacherTooWeakError
from kdbench.teacher import prepare_teacher


@pytest.mark.slow
def test_cache_hit_miss_and_corruption(needs_fmnist: None, tiny_study_dict: dict, tmp_path) -> None:
    study = parse_study(tiny_study_dict)
    cache = tmp_path / "cache"
    first = prepare_teacher(study, cache_dir=cache)
    assert not first.from_cache and first.val_acc > 0.3
    t0 = time.perf_counter()
    second = prepare_teacher(study, cache_dir=cache)
    assert second.from_cache and time.perf_counter() - t0 < 10
    assert second.key == first.key and second.val_acc == first.val_acc
    assert first.cached is not None and second.cached is not None
    assert torch.equal(first.cached.logits, second.cached.logits)
    # corrupt the weights: the checksum catches it and the teacher is rebuilt, not used
    w = first.cache_dir / "weights.pt"
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    w.write_bytes(bytes(raw))
    third = prepare_teacher(study, cache_dir=cache)
    assert not third.from_cache
    # a different recipe is a different key (a miss)
    other = prepare_teacher(parse_study(tiny_study_dict, overrides=["teacher.steps=61"]), cache_dir=cache)
    assert other.key != first.key


@pytest.mark.slow
def test_floor_refuses_a_weak_teacher(needs_fmnist: None, tiny_study_dict: dict, tmp_path) -> None:
    study = parse_study(tiny_study_dict, overrides=["teacher.min_accuracy=0.999"])
    with pytest.raises(TeacherTooWeakError, match=r"teacher\.min_accuracy"):
        prepare_teacher(study, cache_dir=tmp_path / "c")
