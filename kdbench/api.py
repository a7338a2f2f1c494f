"""``kdbench.sweep``: a study run from Python, on the user's own objects (a model class, a trained teacher, data
in memory), the same sweep as ``kdbench sweep``.

    import kdbench
    result = kdbench.sweep("study.yaml", student=Student, teacher=trained_teacher, data=(train, test))
    print(result.verdict)
    result.runs.head()
    result.report(out="reports/mine")

Each object becomes what the study file's form of it would (:mod:`kdbench.models.objects`: a model record and a
fingerprint; :func:`kdbench.data.from_arrays`: the official training and test sets), and
:func:`kdbench.sweep.run_sweep` then runs unchanged. Objects live in this process: for ``workers > 1`` and for other
machines, write the same things as import paths in the study file (``student: {model: "nets.py:Student"}``,
``"package.module:factory"``), which every process can import.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kdbench.config import Study, parse_study
from kdbench.defaults import DEFAULT_STORAGE, IN_MEMORY_DATASET
from kdbench.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from kdbench.data import DatasetInfo, Split
    from kdbench.report import Report
    from kdbench.report.sources import TestSplit

__all__ = ["SweepResult", "sweep"]

_SECTIONS = ("teacher", "student")


@dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` ran: the study, where it is stored, and its results read from there.

    Attributes:
        study: the study as run (objects given as ``teacher=`` / ``student=`` have ``object:<name>`` models).
        storage: the SQLAlchemy URL of the results database.
        finalists: the finalists' summary at the end of the sweep (best configurations, test accuracy over seeds).
        test: the test set given as ``data=`` (for the report's prediction grid), else None (read from its files).
    """

    study: Study
    storage: str
    finalists: pd.DataFrame
    test: TestSplit | None = None

    @property
    def name(self) -> str:
        """The study's name in the database."""
        return self.study.name

    @property
    def runs(self) -> pd.DataFrame:
        """Every run of the study, one row each, as :func:`kdbench.load_runs` reads them now."""
        from kdbench.store import load_runs

        return load_runs(self.storage, self.name)

    @property
    def verdict(self) -> str:
        """The verdict sentence of the report and of ``kdbench report`` (KD against CE, on the finalists)."""
        from kdbench.report import study_frames

        return str(study_frames(self.storage, self.name, load_images=False).verdict)

    def report(self, out: str | Path | None = None) -> Report:
        """Write the study's report (HTML, Markdown, CSV, figures) as ``kdbench report`` does.

        Args:
            out: the folder (default ``reports/<study>/``).

        Returns:
            The report: ``.out`` its folder, ``.files`` what was written.
        """
        from kdbench.report import write_report

        return write_report(self.storage, [self.name], out, tests=None if self.test is None else {self.name: self.test})

    def __repr__(self) -> str:
        return f"SweepResult(study={self.name!r}, storage={self.storage!r}, finalists={len(self.finalists)})"


def sweep(
    study: str | Path | dict[str, Any] | Study,
    *,
    teacher: Any = None,
    student: Any = None,
    data: Any = None,
    storage: str | None = None,
    name: str | None = None,
    replace: bool = False,
    overrides: Sequence[str] = (),
    device: str = "auto",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    max_visits: int | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Run (or resume) a study on your own objects, as ``kdbench sweep`` runs a study file.

    Args:
        study: a study file's path, its content as a dict, or a :class:`kdbench.config.Study`.
        teacher: a trained ``nn.Module`` (evaluated and its logits cached, as a ``teacher.checkpoint``; never
            trained again), or an ``nn.Module`` class or factory, trained as the study's teacher recipe says; or
            a model name / import path (``"nets.py:Teacher"``). Default: the study's ``teacher.model``.
        student: an ``nn.Module`` class or zero-argument factory, called once per trial (fresh weights each); or a
            model name / import path. A class or factory taking ``in_channels``, ``num_classes`` or
            ``image_size`` gets the data's; ``student.model_args`` are passed as keyword arguments.
        data: ``(train, test)`` torch ``Dataset`` s whose items are ``(image, label)`` (a PIL image or a
            ``[C, H, W]`` tensor, an int), or arrays ``(x_train, y_train, x_test, y_test)`` (see
            :func:`kdbench.data.from_arrays`): the official sets, split as the study's ``data`` section says
            (``val_fraction``, ``subset``). Default: the files of the study's ``data.dataset``.
        storage: the results database's SQLAlchemy URL (default ``$KDBENCH_STORAGE``, else ``sqlite:///kdbench.db``).
        name: the study's name (``--set name=...``): a new study beside a stored one of another config.
        replace: drop a stored study of the same name, with its results, once the inputs are checked.
        overrides: ``KEY=VALUE`` strings, as ``--set``.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        threads: torch CPU threads (default: as torch has them).
        cache_dir: the teacher cache (default ``$KDBENCH_CACHE`` or ``./.kdbench-cache``).
        workers: processes sharing the study (a study file without objects only: objects live in this process;
            give them as import paths in the study file to run on workers and machines).
        max_visits: stop after this many trials.
        progress: live progress lines (rich); default only when standard output is a terminal, else one plain line
            per finished trial (as in a notebook).

    Returns:
        A :class:`SweepResult`: ``.runs``, ``.verdict``, ``.report(out=...)``.

    Raises:
        ConfigError: a bad study, object or data (one line naming the argument and the fix); nothing is stored.
        StoreError: the study's name holds a study of another config (an edited class, another trained teacher,
            other data): pass ``name=`` for a new study or ``replace=True``.
    """
    from kdbench.models.objects import model_object, object_name

    storage = storage or os.environ.get("KDBENCH_STORAGE") or DEFAULT_STORAGE
    given = {s: o for s, o in (("teacher", teacher), ("student", student)) if o is not None}
    # the serialisable forms (a model name or an import path) and name= are overrides, as workers read them
    extra = [*(f"{s}.model={json.dumps(str(o))}" for s, o in given.items() if isinstance(o, (str, Path))),
             *([f"name={json.dumps(name)}"] if name is not None else [])]
    given = {s: o for s, o in given.items() if not isinstance(o, (str, Path))}
    raw, folder, source = _raw_study(study, [*overrides, *extra])
    for section, obj in given.items():
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"{source}: {section}: must be a mapping of keys (model, epochs, ...)")
        raw[section]["model"] = object_name(obj)  # its name; its identity is its fingerprint, below
    if workers != 1:
        _check_workers(workers, study, bool(given) or data is not None)
    first = parse_study(copy.deepcopy(raw), source, folder=folder)
    if data is not None:
        if first.data.image_size is not None:
            raise ConfigError(f"data.image_size: {first.data.image_size} resizes files as they are read; resize the "
                              "images given as data= yourself, and drop data.image_size")
        sets = _data_sets(data)
        raw.setdefault("data", {})["dataset"] = IN_MEMORY_DATASET
    elif given:
        from kdbench.data import load_study_raw

        info, train, test, _ = load_study_raw(first.data, first.folder)
        sets = (info, train, test)
    else:
        sets = None
    built = {}
    for section, obj in given.items():
        recipe = getattr(first, section)
        if recipe.weights is not None:
            raise ConfigError(f"{section}.weights: apply to torchvision:/timm: models, not to the object given as "
                              f"{section}=; drop it")
        assert sets is not None
        info = sets[0]
        built[section] = model_object(section, obj, **info.model_shape, model_args=recipe.model_args)
        if built[section].trained:
            for key in ("checkpoint", "pretrained"):
                if getattr(recipe, key, None):
                    raise ConfigError(f"teacher.{key}: the trained module given as teacher= is the teacher's weights; "
                                      f"drop teacher.{key}")
    final = parse_study(copy.deepcopy(raw), source, folder=folder)
    for section, obj in built.items():
        final.set_model_object(section, obj)
    if workers != 1:
        return _sweep_workers(final, study, [*overrides, *extra], storage=storage, workers=workers,
                              device=device, threads=threads, cache_dir=cache_dir, max_visits=max_visits,
                              replace=replace, progress=progress)
    return _sweep_here(final, sets, storage=storage, device=device, threads=threads, cache_dir=cache_dir,
                       max_visits=max_visits, replace=replace, progress=progress)


def _raw_study(study: Any, overrides: list[str]) -> tuple[dict[str, Any], Path | None, str]:
    """The study as a raw mapping with ``overrides`` applied (validated later, once the objects are named in it),
    its file's folder, and how messages name it."""
    from kdbench.config import read_study_file
    from kdbench.studyfile import apply_overrides

    folder: Path | None
    if isinstance(study, (str, Path)):
        raw, folder = read_study_file(study), Path(study).resolve().parent
    elif isinstance(study, Study):
        raw, folder = study.model_dump(mode="json"), study.folder
    elif isinstance(study, dict):
        raw, folder = copy.deepcopy(study), None
    else:
        raise ConfigError(f"study: got a {type(study).__name__}; give a study file's path, its content as a dict or a "
                          "kdbench.config.Study")
    source = str(study) if isinstance(study, (str, Path)) else "study"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a study must be a mapping of keys (name, data, teacher, ...)")
    return apply_overrides(raw, overrides), folder, source


def _check_workers(workers: int, study: Any, objects: bool) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: give a positive number of processes")
    if objects:
        raise ConfigError(f"workers={workers}: objects given as teacher=, student= or data= live in this process "
                          "only; use workers=1, or write them as import paths in the study file (student: {model: "
                          "'nets.py:Student'}, 'package.module:factory') to run on workers and machines")
    if not isinstance(study, (str, Path)):
        raise ConfigError(f"workers={workers}: each worker reads the study from its file; give the study as a path")


# ---------------------------------------------------------------------------------------------- data in memory


def _data_sets(data: Any) -> tuple[DatasetInfo, Split, Split]:
    """``data=`` as the official training and test sets (:func:`kdbench.data.from_arrays`)."""
    from kdbench.data import from_arrays

    if isinstance(data, (tuple, list)) and len(data) == 4:
        import torch

        arrays = [a.detach().cpu() if isinstance(a, torch.Tensor) else a for a in data]  # numpy reads CPU tensors
        return from_arrays(*arrays, name=IN_MEMORY_DATASET, source="data=")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x_train, y_train = _dataset_arrays(data[0], "train")
        x_test, y_test = _dataset_arrays(data[1], "test")
        classes = getattr(data[0], "classes", None)
        if not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
            classes = None
        return from_arrays(x_train, y_train, x_test, y_test, name=IN_MEMORY_DATASET, classes=classes, source="data=")
    what = f"a {type(data).__name__}" + (f" of {len(data)}" if isinstance(data, (tuple, list)) else "")
    raise ConfigError(f"data=: got {what}; give (train, test) torch Datasets of (image, label) items or arrays "
                      "(x_train, y_train, x_test, y_test)")


def _dataset_arrays(ds: Any, which: str) -> tuple[np.ndarray, np.ndarray]:
    """A torch ``Dataset`` of ``(image, label)`` items as ``uint8`` images and integer labels."""
    import torch

    if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise ConfigError(f"data= {which}: a {type(ds).__name__} is not a Dataset (no len() and [i]); give a torch "
                          "Dataset of (image, label) items")
    images, labels = [], []
    for i in range(len(ds)):
        item = ds[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ConfigError(f"data= {which}[{i}]: a {type(item).__name__}; items must be (image, label) pairs")
        image, label = item
        if isinstance(image, torch.Tensor):
            x = image.detach().cpu()
            if x.is_floating_point():  # ToTensor()'s [0, 1] floats
                if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
                    raise ConfigError(f"data= {which}[{i}]: float image values in [{float(x.min()):.3g}, "
                                      f"{float(x.max()):.3g}]; give uint8 images or [0, 1] floats (no Normalize: "
                                      "kdbench normalises with the training pixels' statistics)")
                x = (x * 255).round().to(torch.uint8)
            arr = x.numpy()
        else:
            arr = np.asarray(image)  # a PIL image: (H, W) or (H, W, C)
            if arr.dtype == object or arr.ndim not in (2, 3):
                raise ConfigError(f"data= {which}[{i}]: the image is a {type(image).__name__}; give a PIL image or a "
                                  "[C, H, W] tensor")
        try:
            labels.append(int(label))
        except (TypeError, ValueError):
            raise ConfigError(f"data= {which}[{i}]: label {label!r} is not an integer class index") from None
        images.append(arr)
    if not images:
        raise ConfigError(f"data= {which}: the Dataset is empty")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ConfigError(f"data= {which}: images of {len(shapes)} shapes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                          "resize them to one size (a transform of the Dataset)")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- running


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines (coloured, on stderr) off while the sweep runs, as the CLI has them."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _hint(exc: StoreError) -> StoreError:
    """The store's refusal of a changed study, with this API's options in place of the command's."""
    text = str(exc).replace("--set name=", "name=").replace("--replace", "replace=True")
    return StoreError(text)


def _sweep_here(study: Study, sets: tuple[DatasetInfo, Split, Split] | None, *, storage: str, device: str,
                threads: int | None, cache_dir: str | Path | None, max_visits: int | None, replace: bool,
                progress: bool | None) -> SweepResult:
    from kdbench.progress import sweep_display
    from kdbench.store import Store
    from kdbench.sweep import run_sweep
    from kdbench.train import setup_device

    dev = setup_device(device, threads)
    store = Store.open(storage)
    live = sys.stdout.isatty() if progress is None else progress
    epochs = study.student.epochs if study.student.steps is None else None
    with _quiet_optuna(), sweep_display(not live, epochs) as events:
        try:
            summary = run_sweep(study, storage=store, device=dev, cache_dir=cache_dir, events=events,
                                max_visits=max_visits, replace=replace, sets=sets)
        except StoreError as exc:
            raise _hint(exc) from None
    test = None
    if sets is not None and study.data.dataset == IN_MEMORY_DATASET:  # the report cannot read these from files
        from kdbench.report.sources import TestSplit

        info, _, split = sets
        test = TestSplit(split.labels.numpy(), split.images.numpy(), list(info.classes))
    return SweepResult(study, storage, summary, test)


def _sweep_workers(study: Study, path: Any, overrides: list[str], *, storage: str, workers: int, device: str,
                   threads: int | None, cache_dir: str | Path | None, max_visits: int | None, replace: bool,
                   progress: bool | None) -> SweepResult:
    from kdbench.progress import sweep_display
    from kdbench.store import Store
    from kdbench.train import setup_device
    from kdbench.workers import sweep_workers

    dev = setup_device(device, threads)
    store = Store.open(storage)
    live = sys.stdout.isatty() if progress is None else progress
    with _quiet_optuna(), sweep_display(not live, study.student.epochs) as events:
        try:
            sweep_workers(study, path, overrides, workers=workers, store=store, storage_url=storage, device=device,
                          here=dev, events=events, threads=threads, cache_dir=cache_dir, max_visits=max_visits,
                          replace=replace)
        except StoreError as exc:
            raise _hint(exc) from None
    return SweepResult(study, storage, store.finalist_summary(study.name))
