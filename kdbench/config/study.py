"""The whole study: its sections, the names of its Optuna studies, parsing and loading a study file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from kdbench.budget import Budget
from kdbench.config.base import Strict
from kdbench.config.data import DataConfig
from kdbench.config.launcher import LauncherConfig
from kdbench.config.recipe import StudentConfig, TeacherConfig
from kdbench.config.search import BaselineConfig, FinalistsConfig, SearchConfig
from kdbench.errors import ConfigError
from kdbench.losses import METHODS
from kdbench.studyfile import apply_overrides, format_error, read_yaml
from kdbench.studyhash import study_hash

__all__ = ["OPTUNA_SUFFIXES", "Study", "load_study", "optuna_study_name", "optuna_study_names", "parse_study",
           "read_study_file"]


def optuna_study_name(study: str, loss: str) -> str:
    """The Optuna study of one loss of a study: ``<study>`` for Hinton's KD, ``<study>.ce``, ``<study>.<method>``.
    The one place these names are made: every place that creates, lists or drops them asks here."""
    return study if loss == "kd" else f"{study}.{loss}"


def optuna_study_names(study: str) -> list[str]:
    """Every Optuna study a kdbench study may own, whatever its methods: CE's, CE with label smoothing's and every
    registered method's."""
    return [optuna_study_name(study, loss) for loss in ("ce", "ce_ls", *METHODS)]


OPTUNA_SUFFIXES = tuple(n.removeprefix("x") for n in optuna_study_names("x") if n != "x")  # ".ce", ".dkd", ...
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class Study(Strict):
    """A whole study file."""

    name: str = Field(json_schema_extra={
        "pattern": SAFE_NAME.pattern,
        "not": {"pattern": "(" + "|".join(re.escape(x) for x in OPTUNA_SUFFIXES) + ")$"}})
    """The study's name in the database and in ``reports/<name>/``: letters, digits, ``.``, ``_``, ``-`` (a file-safe
    name, up to 100), not ending in another study's Optuna suffix (``.ce``, ``.dkd``, ...)."""
    seed: int = 0
    """Base seed: data split, teacher and search (search seeds seed + 1000 + i); finalists use seed+1, seed+2, ..."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Which data, and how it is split."""
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    """The teacher's recipe: trained once (or loaded from ``checkpoint``), then cached."""
    student: StudentConfig = Field(default_factory=StudentConfig)
    """The student's recipe, shared by every trial; its lr comes from ``search.lr``."""
    search: SearchConfig = Field(default_factory=SearchConfig)
    """What is searched: T x alpha (+ lr), the methods, replicates, budgets."""
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    """The baselines: CE, and CE with label smoothing."""
    finalists: FinalistsConfig = Field(default_factory=FinalistsConfig)
    """The best configurations re-trained on fresh paired seeds and tested."""
    log: list[Literal["mlflow", "tensorboard"]] = Field(default_factory=list, exclude=True)
    """Experiment trackers every run (and ``kdbench report --log``'s files) is copied to as well: ``mlflow``,
    ``tensorboard`` (see docs/trackers.md). Neither hashed nor stored: it says where results are copied, not what
    they are."""
    launcher: LauncherConfig = Field(default_factory=LauncherConfig, exclude=True)
    """How ``kdbench sweep --workers N`` starts its workers: on this machine, through SLURM or on Ray (see
    docs/cluster.md). Neither hashed nor stored: it says where the work runs, not what it computes."""
    _folder: Path | None = PrivateAttr(default=None)  # the study file's folder: where relative model paths start
    # teacher/student given as Python objects to kdbench.sweep (kdbench.models.objects.ModelObject), this process only
    _objects: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def folder(self) -> Path | None:
        """The folder of the study file this study was read from (None for a dict or a stored config)."""
        return self._folder

    def model_object(self, section: str) -> Any:
        """The :class:`~kdbench.models.objects.ModelObject` given to :func:`kdbench.sweep` as ``section``
        (``teacher`` or ``student``) in this process, or None (the model string says what to build)."""
        return self._objects.get(section)

    def set_model_object(self, section: str, obj: Any) -> None:
        """Build ``section``'s model from ``obj`` (a :class:`~kdbench.models.objects.ModelObject` whose name is this
        study's ``<section>.model``): what :func:`kdbench.sweep` does with a ``teacher=`` or ``student=`` object."""
        if section not in ("teacher", "student") or getattr(self, section).model != obj.name:
            raise ValueError(f"{section}: the object {obj.name!r} is not this study's {section}.model")
        self._objects[section] = obj

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not SAFE_NAME.fullmatch(v):  # fullmatch: '$' alone would accept a final newline
            raise ValueError(
                "not a safe file name: use letters, digits, '.', '_' and '-' (up to 100, no leading '.')"
            )
        for suffix in OPTUNA_SUFFIXES:  # "<name>.ce", "<name>.dkd": the Optuna studies of another study
            if v.endswith(suffix):
                raise ValueError(f"ends in {suffix!r}, the suffix of another study's Optuna studies; pick another name")
        return v

    @field_validator("log")
    @classmethod
    def _log_once(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))  # each tracker once, in the order given

    @model_validator(mode="after")
    def _plan_size(self) -> Study:
        n = self.search_visits
        if n > self.search.max_visits:
            raise ValueError(f"search.max_visits: the search plans {n:,} visits (training runs), more than "
                             f"search.max_visits ({self.search.max_visits:,}); shrink the grid (temperature, alpha, "
                             "lr, replicates, budget), or raise search.max_visits if you mean it")
        f, s = self.finalists, self.search
        if f.lr_recheck and not s.is_grid:
            raise ValueError("finalists.lr_recheck needs a grid search (temperature and alpha as lists); a range "
                             "search's sampler draws lr, so there is no list to re-check along")
        if f.probe:  # probes are drawn from the configurations each method ranks below its top_k finalists
            left = min(s.n_cells(m) if s.is_grid else s.n_trials for m in s.methods) - f.top_k
            if f.probe > left:
                raise ValueError(f"finalists.probe: {f.probe} probes, but the search ranks only {max(left, 0)} "
                                 f"configuration(s) per method below its finalists.top_k = {f.top_k}; set "
                                 f"finalists.probe to at most {max(left, 0)}")
        return self

    @property
    def search_visits(self) -> int:
        """How many visits the search plans (computed, not planned: a huge grid is refused before it is built)."""
        s = self.search
        arms = sum(s.n_cells(m) if s.is_grid else s.n_trials for m in s.methods) + (1 if self.baseline.ce else 0)
        smoothed = self.baseline.label_smoothing  # the ce_ls arm: one cell per epsilon (a range search: its trials)
        arms += len(smoothed) if s.is_grid else s.n_trials if smoothed else 0
        lrs = s.lr_candidates()
        per_arm = len(lrs) * s.n_replicates * len(self.search_budgets) if s.is_grid and lrs else 1
        return arms * per_arm

    @property
    def search_budgets(self) -> list[Budget]:
        """The budgets the search trains at (``search.budget``, else the student recipe's), smallest first."""
        return list(self.search.budget) if self.search.budget else [Budget.of(self.student)]

    @property
    def selection_budget(self) -> Budget:
        """The search budget the finalists are chosen at: the largest."""
        return self.search_budgets[-1]

    @property
    def finalist_budget(self) -> Budget:
        """What the finalists (and probes) train for: ``finalists.budget``, else :attr:`selection_budget`."""
        return self.finalists.budget or self.selection_budget

    def resolved(self) -> dict[str, Any]:
        """The study with every default filled in, as plain JSON-able data."""
        return self.model_dump(mode="json")

    @property
    def hash(self) -> str:
        """Stable short hash of the resolved config (see :func:`study_hash`)."""
        return study_hash(self)


def parse_study(raw: Any, source: str = "study", overrides: list[str] | tuple[str, ...] = (), *,
                folder: Path | None = None) -> Study:
    """Validate a raw mapping (as read from YAML) into a :class:`Study`, after applying overrides; ``folder`` is
    where its relative model paths start (the study file's folder)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a study file must be a YAML mapping of keys (name, data, teacher, ...)")
    raw = apply_overrides(raw, overrides)
    try:
        study = Study.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, source)) from None
    if study.teacher.cache_views and study.data.augment == "none":
        raise ConfigError(f"{source}: teacher.cache: {{views: {study.teacher.cache_views}}} caches augmented views, "
                          "but data.augment is none; use cache: fixed, or set data.augment")
    study._folder = folder
    return study


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read, override and validate a study file.

    Raises:
        ConfigError: one line naming the file, the key and the fix.
    """
    p = Path(path)
    return parse_study(read_study_file(p), str(p), overrides, folder=p.resolve().parent)


def read_study_file(path: str | Path) -> Any:
    """A study file's YAML as read, not yet validated (:func:`parse_study` validates it).

    Raises:
        ConfigError: the file cannot be read, or its YAML is malformed (one line naming the file).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: study file not found (see studies/ for examples)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the study file ({exc.strerror})") from None
    try:
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: malformed YAML{where}: {problem}") from None
    return raw
