"""Train (or load) the teacher once; cache its weights and its logits on the training set.

Cache layout, under the cache folder (``$KDBENCH_CACHE`` or ``./.kdbench-cache``)::

    teachers/<weights key>/weights.pt            state dict (loaded with weights_only=True)
    teachers/<weights key>/meta.json             recipe, accuracies, provenance, sha256 of each file
    teachers/<weights key>/logits-<logits key>.pt  {"logits": [views, N, K], "indices": [N]}

The weights key hashes everything that determines the weights (dataset, split, seed, recipe, the
checkpoint file's bytes, a user's model's fingerprint: for a trained module given to :func:`kdbench.sweep`,
a digest of its ``state_dict``); the logits key adds the cache mode, augmentation and logit precision. A file
whose sha256 does not match meta.json is treated as missing and rebuilt, never used.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.atomic import write_atomically
from kdbench.config import Study
from kdbench.data import Data, load_study_data
from kdbench.defaults import TEACHER_FLOOR_SHARE
from kdbench.errors import CheckpointError, OutputError, TeacherTooWeakError, first_line
from kdbench.evaluate import evaluate, inference_ms_per_batch, predict_logits, scores
from kdbench.models import build_model, count_parameters, load_state_dict_file
from kdbench.models.sources import study_fingerprint, study_model
from kdbench.provenance import device_name, kdbench_commit, library_versions, provenance
from kdbench.train import CachedLogits, EpochRecord, LiveTeacher, TeacherSignal, train, view_images

__all__ = [
    "CACHE_FORMAT",
    "Teacher",
    "default_cache_dir",
    "open_cache_dir",
    "prepare_teacher",
    "teacher_floor",
    "teacher_record",
]

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the files' meaning changes: old caches are then rebuilt


def default_cache_dir() -> Path:
    """``$KDBENCH_CACHE`` if set, else ``./.kdbench-cache``."""
    return Path(os.environ.get("KDBENCH_CACHE", ".kdbench-cache"))


def open_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder (``cache_dir`` or :func:`default_cache_dir`), created and checked to be writable.

    Raises:
        OutputError: it cannot be created or written.
    """
    folder = Path(cache_dir or default_cache_dir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(
            f"--cache-dir {folder}: cannot write there ({exc.strerror or exc}); give a writable folder "
            "(--cache-dir or $KDBENCH_CACHE)"
        ) from None
    return folder


def teacher_floor(study: Study, num_classes: int) -> float:
    """The validation accuracy below which kdbench refuses to distil (default: chance + half of the rest)."""
    if study.teacher.min_accuracy is not None:
        return study.teacher.min_accuracy
    chance = 1.0 / num_classes
    return chance + TEACHER_FLOOR_SHARE * (1.0 - chance)


@dataclass
class Teacher:
    """A trained teacher, its accuracies and (unless 'live') its cached training-set logits."""

    model: nn.Module
    key: str
    logits_key: str
    val_acc: float
    val_loss: float
    test_acc: float
    test_loss: float
    parameters: int
    cache_dir: Path
    from_cache: bool
    seconds: float
    train_seconds: float | None
    meta: dict[str, Any]
    cached: CachedLogits | None
    indices: torch.Tensor | None  # official training-set index of each cached row
    logit_dtype: torch.dtype

    def signal_for(self, data: Data) -> TeacherSignal:
        """Teacher logits aligned with ``data.train`` (any subset of the teacher's rows), or the live model."""
        if self.cached is None:
            return LiveTeacher(self.model, self.logit_dtype)
        assert self.indices is not None
        lookup = torch.full((int(self.indices.max()) + 1,), -1, dtype=torch.long)
        lookup[self.indices] = torch.arange(len(self.indices))
        want = data.train_indices.cpu()
        if int(want.max()) >= len(lookup) or bool((lookup[want] < 0).any()):
            raise ValueError("the student's training rows are not all in the teacher's cache")
        rows = lookup[want].to(self.cached.logits.device)
        return CachedLogits(self.cached.logits[:, rows], self.cached.augmented, self.cached.seed)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _weights_key(study: Study, data: Data) -> str:
    """What decides the teacher: its recipe (weights files by content, not path), the data (by content: two
    image folders with the same recipe are two teachers), the split and the seed."""
    recipe = study.teacher.model_dump(mode="json", exclude={"cache", "logit_dtype", "min_accuracy"})
    for key, default in (("weights", None), ("model_args", {})):  # added later: at their defaults, keys unchanged
        if recipe[key] == default:
            del recipe[key]
    if ":" in study.teacher.model:  # a model from outside the zoo: what defines it, by content
        recipe["fingerprint"] = study_fingerprint(study, "teacher")
    obj = study.model_object("teacher")
    if obj is not None and obj.trained:  # a trained module: its fingerprint holds its weights' digest
        recipe = {"model": study.teacher.model, "fingerprint": recipe["fingerprint"]}
    elif study.teacher.checkpoint:
        path = Path(study.teacher.checkpoint)
        if not path.is_file():
            raise CheckpointError(f"teacher.checkpoint: file {path} not found; give the path of a state dict")
        recipe = {"model": study.teacher.model, "checkpoint_sha256": _sha256(path),
                  **({"fingerprint": recipe["fingerprint"]} if "fingerprint" in recipe else {})}
    elif study.teacher.pretrained and Path(study.teacher.pretrained).is_file():
        recipe["pretrained"] = _sha256(Path(study.teacher.pretrained))  # the weights, wherever they lie
    d = study.data
    return _key({
        "format": CACHE_FORMAT, "dataset": d.dataset, "val_fraction": d.val_fraction, "augment": d.augment,
        "image_size": d.image_size, "seed": study.seed, "teacher": recipe, "data": data.fingerprint,
    })


def _logits_key(study: Study, weights_key: str) -> str:
    t = study.teacher
    return _key({"weights": weights_key, "cache": t.cache, "dtype": t.logit_dtype, "augment": study.data.augment})


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


def _verified(path: Path, expected: str | None) -> bool:
    if not path.is_file() or expected is None:
        return False
    if _sha256(path) != expected:
        log.warning("teacher cache file %s fails its checksum: rebuilding it", path)
        return False
    return True


def _cache_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` whole through a temporary file renamed into place; on any failure (a full disk, a
    read-only folder) the temporary file is removed and one line names the path and the fix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, write)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        why = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1][:200]
        raise OutputError(f"teacher cache: cannot write {path} ({why}); free space there, make it writable, or "
                          "point --cache-dir (or $KDBENCH_CACHE) at another folder") from None


def _atomic_save(obj: Any, path: Path) -> str:
    digest: list[str] = []

    def save(tmp: Path) -> None:
        torch.save(obj, tmp)
        digest.append(_sha256(tmp))

    _cache_write(path, save)
    return digest[0]


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    _cache_write(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True)))


def _load_cached(path: Path, device: torch.device | str) -> Any:
    """A checksum-valid cache file, loaded with ``weights_only=True``; None (rebuild it) if it holds something
    else than plain tensors (a file written by hand or by another program under the same name)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError, EOFError, RuntimeError: not a plain weights file
        log.warning("teacher cache file %s is not a valid weights file (%s): rebuilding it", path, first_line(exc))
        return None


def prepare_teacher(
    study: Study,
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    data: Data | None = None,
    enforce_floor: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> Teacher:
    """Return the study's teacher, from the cache when it is there and intact, else trained (or loaded).

    Args:
        study: the study; its ``teacher`` recipe, ``data`` and ``seed`` decide the teacher.
        device: where to train and keep the logits.
        cache_dir: the cache folder (default :func:`default_cache_dir`).
        data: the teacher's data (full training split, no subset), if already loaded.
        enforce_floor: raise :class:`TeacherTooWeakError` when validation accuracy is below the floor.
        on_epoch: progress callback while training.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    cfg = study.teacher
    if data is None:
        data = load_study_data(study.data, seed=study.seed, device=device, subset=False, folder=study.folder)
    info = data.info
    wkey = _weights_key(study, data)
    lkey = _logits_key(study, wkey)
    folder = open_cache_dir(cache_dir) / "teachers" / wkey  # created once there is something to keep
    meta = _read_meta(folder) or {}
    wpath = folder / "weights.pt"

    def fresh() -> nn.Module:  # the untrained teacher, seeded: built again if a cached state half-loaded
        torch.manual_seed(study.seed)
        return build_model(study_model(study, "teacher"), **info.model_shape, weights=cfg.weights,
                           model_args=cfg.model_args,
                           folder=study.folder,
                           pretrained=cfg.pretrained if not cfg.checkpoint else None).to(device)

    model = fresh()
    state = _load_cached(wpath, device) if _verified(wpath, meta.get("weights_sha256")) else None
    from_cache = False
    if isinstance(state, dict):
        try:
            model.load_state_dict(state)
            from_cache = True
        except (RuntimeError, TypeError) as exc:  # a state dict of another model under this key
            log.warning("teacher cache file %s does not fit %s (%s): rebuilding it", wpath, cfg.model, first_line(exc))
            model = fresh()
    train_seconds: float | None = None
    obj = study.model_object("teacher")
    if from_cache:
        model.eval()
    else:
        if obj is not None and obj.trained:
            log.info("teacher %s: the trained module given to kdbench.sweep, evaluated as it is", cfg.model)
        elif cfg.checkpoint:
            try:
                load_state_dict_file(model, cfg.checkpoint)
            except CheckpointError as exc:
                raise CheckpointError(f"teacher.checkpoint: {exc}") from None
        else:
            log.info("training teacher %s (%s) on %s", cfg.model, wkey, device)
            res = train(model, data, cfg, seed=study.seed, augment_kind=study.data.augment, callback=on_epoch)
            train_seconds = res.wall_time_s
        val_acc, val_loss = evaluate(model, data.val, info)
        test_logits = predict_logits(model, data.test.images, info)  # one pass: the scores and the predictions
        test_acc, test_loss = scores(test_logits, data.test.labels)
        meta = {
            "format": CACHE_FORMAT, "key": wkey, "model": cfg.model, "dataset": info.name,
            "recipe": cfg.model_dump(mode="json"), "seed": study.seed,
            "checkpoint": cfg.checkpoint, "parameters": count_parameters(model),
            "val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc, "test_loss": test_loss,
            "train_seconds": train_seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "provenance": provenance(device), "logits": {},
        }
        meta["weights_sha256"] = _atomic_save(model.state_dict(), wpath)
        meta.update(_record_outputs(model, data, device, test_logits))
        _write_meta(folder, meta)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    floor = teacher_floor(study, info.num_classes)
    if enforce_floor and not meta["val_acc"] >= floor:
        raise TeacherTooWeakError(
            f"teacher {cfg.model} reaches {meta['val_acc']:.1%} validation accuracy, below the floor "
            f"{floor:.1%} (teacher.min_accuracy): train it longer "
            f"({'the module given as teacher=' if obj is not None and obj.trained else 'teacher.epochs'}) or lower "
            "the floor"
        )

    logit_dtype = torch.float16 if cfg.logit_dtype == "float16" else torch.float32
    cached: CachedLogits | None = None
    indices: torch.Tensor | None = None
    if cfg.cache != "live":
        lpath = folder / f"logits-{lkey}.pt"
        entry = meta.get("logits", {}).get(lkey, {})
        augmented = cfg.cache_views > 0 and study.data.augment != "none"
        blob = _load_cached(lpath, "cpu") if _verified(lpath, entry.get("sha256")) else None
        if isinstance(blob, dict) and isinstance(blob.get("logits"), torch.Tensor) \
                and isinstance(blob.get("indices"), torch.Tensor):
            logits, indices = blob["logits"], blob["indices"]
        else:
            views = max(1, cfg.cache_views) if augmented else 1
            outs = []
            for v in range(views):
                imgs = view_images(data.train.images, study.data.augment, study.seed, v) if augmented \
                    else data.train.images
                outs.append(predict_logits(model, imgs, info, amp=cfg.amp).to(logit_dtype).cpu())
            logits, indices = torch.stack(outs), data.train_indices.cpu()
            sha = _atomic_save({"logits": logits, "indices": indices}, lpath)
            meta = _read_meta(folder) or meta
            meta.setdefault("logits", {})[lkey] = {"sha256": sha, "views": views, "mode": cfg.cache,
                                                   "dtype": cfg.logit_dtype}
            _write_meta(folder, meta)
        if not torch.isfinite(logits.float()).all():
            raise CheckpointError(f"teacher logits in {lpath} are not finite; delete {folder} and rerun")
        cached = CachedLogits(logits.to(device), augmented=augmented, seed=study.seed)

    return Teacher(
        model=model, key=wkey, logits_key=lkey, val_acc=meta["val_acc"], val_loss=meta["val_loss"],
        test_acc=meta["test_acc"], test_loss=meta["test_loss"], parameters=meta["parameters"],
        cache_dir=folder, from_cache=from_cache, seconds=time.perf_counter() - t0,
        train_seconds=meta.get("train_seconds"), meta=meta, cached=cached, indices=indices,
        logit_dtype=logit_dtype,
    )


def _record_outputs(model: nn.Module, data: Data, device: torch.device,
                    test_logits: torch.Tensor | None = None) -> dict[str, Any]:
    """What the store's teacher row needs from running the teacher: its test predictions (int16, base64),
    logits (float16, base64) and its inference time, computed once with the teacher and kept in the cache's
    meta, so that a worker that finds the teacher cached never runs it (a cnn-m pass over the test set costs
    ~300 MiB on the CPU)."""
    if test_logits is None:
        test_logits = predict_logits(model, data.test.images, data.info)
    preds = test_logits.argmax(1).to(torch.int16).cpu().numpy()
    logits = test_logits.float().cpu().half().numpy()  # float16: the report's calibration (ECE, NLL)
    return {"test_predictions": base64.b64encode(preds.tobytes()).decode("ascii"),
            "test_logits": base64.b64encode(logits.tobytes()).decode("ascii"),
            "infer_ms_per_batch": inference_ms_per_batch(model, data.info, device)}


def teacher_record(teacher: Teacher, data: Data, device: torch.device) -> dict[str, Any]:
    """The teacher's row for the store: accuracies, timing, provenance and its test-set predictions (int16).

    Read from the cache's meta; a cache written before kdbench kept them there gets them now.
    """
    meta = teacher.meta
    if any(k not in meta for k in ("test_predictions", "test_logits", "infer_ms_per_batch")):
        meta.update(_record_outputs(teacher.model, data, device))
        with contextlib.suppress(OutputError):  # a read-only or full cache still records the teacher
            _write_meta(teacher.cache_dir, meta)
    prov = meta.get("provenance", {})
    return dict(
        key=teacher.key, model=meta["model"], dataset=data.info.name, parameters=teacher.parameters,
        val_acc=teacher.val_acc, test_acc=teacher.test_acc, train_seconds=teacher.train_seconds,
        infer_ms_per_batch=meta["infer_ms_per_batch"],
        cache_location=str(teacher.cache_dir.resolve()), device=prov.get("device", device_name(device)),
        versions=json.dumps(prov.get("versions", library_versions()), sort_keys=True),
        commit=prov.get("commit", kdbench_commit()), test_predictions=base64.b64decode(meta["test_predictions"]),
        test_logits=base64.b64decode(meta["test_logits"]))
