from __future__ import annotations

import time

import numpy as np
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


@pytest.mark.slow
def test_the_store_record_comes_from_the_cache(needs_fmnist: None, tiny_study_dict: dict, tmp_path) -> None:
    """The teacher's test predictions and inference time are kept in the cache with it, so a worker that finds
    the teacher cached records it without running it; a cache written before they were kept gets them."""
    import json

    from kdbench.data import load_data
    from kdbench.teacher import teacher_record

    study = parse_study(tiny_study_dict)
    data = load_data("fashion-mnist", val_fraction=study.data.val_fraction, seed=study.seed)
    first = prepare_teacher(study, cache_dir=tmp_path / "c", data=data)
    rec = teacher_record(first, data, torch.device("cpu"))
    preds = torch.from_numpy(np.frombuffer(rec["test_predictions"], dtype="int16").copy())
    assert len(preds) == len(data.test)
    assert float((preds.long() == data.test.labels).float().mean()) == pytest.approx(first.test_acc)
    cached = prepare_teacher(study, cache_dir=tmp_path / "c", data=data)
    calls = []
    cached.model.register_forward_hook(lambda *a: calls.append(1))
    assert teacher_record(cached, data, torch.device("cpu")) == rec and not calls  # never ran the teacher
    meta_path = first.cache_dir / "meta.json"
    old = json.loads(meta_path.read_text())
    del old["test_predictions"], old["infer_ms_per_batch"]
    meta_path.write_text(json.dumps(old))  # as an earlier kdbench wrote it
    again = prepare_teacher(study, cache_dir=tmp_path / "c", data=data)
    assert teacher_record(again, data, torch.device("cpu"))["test_predictions"] == rec["test_predictions"]
    assert "test_predictions" in json.loads(meta_path.read_text())  # written back for the next worker
