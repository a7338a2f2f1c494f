from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kdbench.config import parse_study
from kdbench.errors import TeacherTooWeakError
from kdbench.teacher import prepare_teacher


@pytest.mark.slow
def test_cache_hit_miss_and_corruption(small_study_dict: dict, tmp_path) -> None:
    study = parse_study(small_study_dict)
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
    other = prepare_teacher(parse_study(small_study_dict, overrides=["teacher.steps=61"]), cache_dir=cache)
    assert other.key != first.key


@pytest.mark.slow
def test_floor_refuses_a_weak_teacher(small_study_dict: dict, tmp_path) -> None:
    study = parse_study(small_study_dict, overrides=["teacher.min_accuracy=0.999"])
    with pytest.raises(TeacherTooWeakError, match=r"teacher\.min_accuracy"):
        prepare_teacher(study, cache_dir=tmp_path / "c")


@pytest.mark.slow
def test_the_store_record_comes_from_the_cache(small_study_dict: dict, tmp_path) -> None:
    """The teacher's test predictions and inference time are kept in the cache with it, so a worker that finds
    the teacher cached records it without running it; a cache written before they were kept gets them."""
    import json

    from kdbench.data import load_study_data
    from kdbench.teacher import teacher_record

    study = parse_study(small_study_dict)
    data = load_study_data(study.data, seed=study.seed, subset=False)  # the teacher's data
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


@pytest.mark.slow
def test_a_cache_entry_that_is_not_weights_is_rebuilt(small_study_dict: dict, tmp_path) -> None:
    """A checksum-valid weights.pt holding something else than a state dict (here a pickled module, which
    weights_only=True refuses) is an invalid cache entry: rebuilt, not a traceback."""
    import json

    from kdbench.teacher import _sha256

    study = parse_study(small_study_dict)
    first = prepare_teacher(study, cache_dir=tmp_path / "c")
    wpath = first.cache_dir / "weights.pt"
    torch.save(torch.nn.Linear(2, 2), wpath)
    meta = json.loads((first.cache_dir / "meta.json").read_text())
    meta["weights_sha256"] = _sha256(wpath)  # as if the cache itself had written it
    (first.cache_dir / "meta.json").write_text(json.dumps(meta))
    again = prepare_teacher(study, cache_dir=tmp_path / "c")
    assert not again.from_cache and again.val_acc == pytest.approx(first.val_acc, abs=0.02)
    assert isinstance(torch.load(wpath, weights_only=True), dict)  # the entry is whole again


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_study_dict: dict, tmp_path) -> None:
    """The cache's writes fail (a file-size limit stands in for a full disk): exit 2, one line naming the
    path, and no half-written .tmp file left behind."""
    import resource
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))

    def limit() -> None:  # writes past 16 KiB fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "kdbench", "teacher", str(path), "--device", "cpu", "--threads", "1",
                          "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, preexec_fn=limit,
                         env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin",
                              "PYTHONDONTWRITEBYTECODE": "1"},  # no bytecode cut short by the limit
                         timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("kdbench: error: teacher cache: cannot write ") and "Traceback" not in res.stderr
    assert "weights.pt" in lines[-1] and "--cache-dir" in lines[-1]
    assert not list((tmp_path / "c").rglob("*.tmp*"))


def test_the_teacher_cache_knows_what_the_data_are(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two image folders, same recipe, one shared cache: two teachers (the key holds the data's fingerprint);
    the same images copied to another folder: the same teacher, from the cache."""
    import shutil

    from PIL import Image

    def folder(name: str, seed: int) -> str:
        rng = np.random.default_rng(seed)
        for c in range(2):
            d = tmp_path / name / "train" / f"class{c}"
            d.mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(d / f"{i}.png")
        return str(tmp_path / name)

    def study(root: str):  # type: ignore[no-untyped-def]
        return parse_study({"name": "f", "data": {"dataset": "imagefolder", "root": root, "image_size": 16,
                                                  "val_fraction": 0.25},
                            "teacher": {"model": "cnn-s", "steps": 3, "batch_size": 4}})

    a, b = folder("a", 0), folder("b", 1)
    cache = tmp_path / "cache"
    first = prepare_teacher(study(a), cache_dir=cache, enforce_floor=False)
    other = prepare_teacher(study(b), cache_dir=cache, enforce_floor=False)
    assert other.key != first.key and not other.from_cache
    shutil.copytree(a, tmp_path / "a-copy")
    again = prepare_teacher(study(str(tmp_path / "a-copy")), cache_dir=cache, enforce_floor=False)
    assert again.key == first.key and again.from_cache


@pytest.mark.slow
def test_cached_augmented_views(small_study_dict: dict, tmp_path) -> None:
    """teacher.cache: {views: 3} with data.augment: flip keeps the teacher's logits of 3 seeded flipped views of
    the training split (each equal to the teacher's logits on that view), reads them back from the cache, and a
    student's epoch e trains on view e mod 3 with its logits."""
    from kdbench.data import load_study_data
    from kdbench.evaluate import predict_logits
    from kdbench.loop import epoch_pixels, view_images

    raw = {**small_study_dict, "data": {**small_study_dict["data"], "augment": "flip"},
           "teacher": {**small_study_dict["teacher"], "cache": {"views": 3}, "logit_dtype": "float32"}}
    study = parse_study(raw)
    data = load_study_data(study.data, seed=study.seed, subset=False)  # the teacher's data
    first = prepare_teacher(study, cache_dir=tmp_path / "c", data=data)
    cached = first.cached
    assert cached is not None and cached.augmented and cached.logits.shape == (3, len(data.train), 10)
    for v in range(3):
        images = view_images(data.train.images, "flip", study.seed, v)
        expected = predict_logits(first.model, images, data.info, amp=study.teacher.amp)
        assert torch.allclose(cached.logits[v], expected, atol=1e-5)
    assert not torch.equal(cached.logits[0], cached.logits[1])  # the views differ
    again = prepare_teacher(study, cache_dir=tmp_path / "c", data=data)
    assert again.from_cache and again.cached is not None and torch.equal(again.cached.logits, cached.logits)
    for epoch in range(4):  # a student's epoch trains on its view, with that view's logits
        pixels, logits = epoch_pixels(data, cached, "flip", seed=1, epoch=epoch)
        assert torch.equal(pixels, view_images(data.train.images, "flip", study.seed, epoch % 3))
        assert logits is not None and torch.equal(logits, cached.logits[epoch % 3])
