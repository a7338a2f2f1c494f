"""The study file: a typed schema with every default and its unit, validation, overrides and a stable hash.

A study file (``studies/*.yaml``) names a dataset, a teacher recipe, a student recipe, the T × alpha
grid (and lr range) to search, the CE baseline and the finalists. Unknown keys are errors: a typo must
never fall back to a default. Every study key's default lives here.

The module runs a little past 400 lines because it is the one place for the schema, each default with its
unit, and the validation of each key: splitting it would scatter the defaults it promises to keep together.
Reading the file (YAML, overrides, one-line errors) is :mod:`kdbench.studyfile`; the hash's history is
:mod:`kdbench.studyhash`; defaults that are not study keys are :mod:`kdbench.defaults`.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kdbench.budget import Budget
from kdbench.defaults import (
    GRID_REPLICATES,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_STEPS,
    MAX_VISITS,
    RANGE_TRIALS,
    SEARCH_SEED_OFFSET,
)
from kdbench.errors import ConfigError
from kdbench.losses import METHODS, WEIGHTS
from kdbench.studyfile import apply_overrides, format_error, read_yaml
from kdbench.studyhash import study_hash

__all__ = [
    "BaselineConfig",
    "Budget",
    "DataConfig",
    "FinalistsConfig",
    "Range",
    "Recipe",
    "SearchConfig",
    "StudentConfig",
    "Study",
    "TeacherConfig",
    "apply_overrides",
    "load_study",
    "optuna_study_name",
    "optuna_study_names",
    "parse_study",
    "study_hash",
]



def optuna_study_name(study: str, loss: str) -> str:
    """The Optuna study of one loss of a study: ``<study>`` for Hinton's KD, ``<study>.ce``, ``<study>.<method>``.
    The one place these names are made: every place that creates, lists or drops them asks here."""
    return study if loss == "kd" else f"{study}.{loss}"


def optuna_study_names(study: str) -> list[str]:
    """Every Optuna study a kdbench study may own, whatever its methods: CE's and every registered method's."""
    return [optuna_study_name(study, loss) for loss in ("ce", *METHODS)]


OPTUNA_SUFFIXES = tuple(n.removeprefix("x") for n in optuna_study_names("x") if n != "x")  # ".ce", ".dkd", ...
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def is_geometric(values: list[float]) -> bool:
    """True for three or more positive values with a constant ratio (T = 1, 2, 4, 8).

    Such a grid is searched (and drawn) on a log scale; alpha = 0.1, 0.3, ..., 0.9 is not geometric.
    """
    v = sorted(float(x) for x in values)
    if len(v) < 3 or v[0] <= 0:
        return False
    steps = [math.log(b / a) for a, b in itertools.pairwise(v)]
    return steps[0] > 0 and all(math.isclose(x, steps[0], rel_tol=0.05) for x in steps)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(_Strict):
    """Which data, and how it is split. Sizes are in samples."""

    dataset: str = "fashion-mnist"  # fashion-mnist | mnist | cifar10 | cifar100 | imagefolder
    root: str | None = None  # folder holding the files; else $KDBENCH_DATA, ./data, /usr/share/datasets
    download: bool = False  # allow torchvision's download when the files are nowhere to be found
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1  # of the official training set, stratified
    subset: Annotated[int, Field(gt=0)] | None = None  # labelled training samples for the student
    augment: Literal["none", "flip", "crop", "crop+flip"] = "none"  # batched on the device, seeded
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None  # pixels; imagefolder resize (IMAGEFOLDER_SIZE)


class Recipe(_Strict):
    """How one model is trained. lr is per optimiser step (not scaled by batch size)."""

    model: str
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | None = 3  # passes over the training split
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None  # optimiser steps; overrides epochs when set
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 128  # samples per step
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0)] = 1.0e-3  # learning rate per step
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0  # L2 (sgd, adam) or decoupled (adamw)
    schedule: Literal["constant", "cosine", "step"] = "constant"  # lr schedule over the budget
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0  # linear warm-up from 0, in epochs
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # 'step' schedule: fractions of the budget
    step_gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # 'step' schedule: lr factor at each milestone
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # on the hard-label CE term
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool | Literal["auto"] = "auto"  # auto: on for CNNs on CUDA
    compile: bool = False  # torch.compile the model
    pretrained: str | None = None  # a local state-dict file to start from

    @field_validator("step_milestones")
    @classmethod
    def _milestones_in_unit(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (0.0 < m < 1.0) for m in v) or list(v) != sorted(v):
            raise ValueError("must be increasing fractions of the budget, each in (0, 1)")
        return v


class TeacherConfig(Recipe):
    """The teacher: trained once from this recipe (or loaded from ``checkpoint``), then cached."""

    model: str = "cnn-m"
    checkpoint: str | None = None  # a state-dict file: load instead of training
    cache: Literal["fixed", "live"] | dict[Literal["views"], Annotated[int, Field(ge=1)]] = "fixed"
    logit_dtype: Literal["float16", "float32"] = "float16"  # precision of cached (and live) logits
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # val accuracy floor; default
    # None means chance + half the way to 1 (0.55 for 10 classes): clearly above chance

    @property
    def cache_views(self) -> int:
        """Number of cached augmented views (0 for 'fixed' and 'live')."""
        return self.cache["views"] if isinstance(self.cache, dict) else 0


class StudentConfig(Recipe):
    """The student recipe shared by every trial; lr is searched (``search.lr``)."""

    model: str = "mlp-800"


class Range(_Strict):
    """A range handed to the sampler."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high}); swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


Grid = Annotated[list[float], Field(min_length=1)]
Space = Grid | Range | float  # one hyperparameter of a method: a grid, a range, or one value


def _values(v: Space) -> list[float]:
    return [v.low, v.high] if isinstance(v, Range) else v if isinstance(v, list) else [v]


_VALUE_CHECKS = {  # what each searched value must be, and the message when it is not
    "temperature": (lambda x: math.isfinite(x) and x > 0, "temperatures must be > 0"),
    "alpha": (lambda x: 0.0 <= x <= 1.0, "alpha values must be in [0, 1] (the weight of the hard labels)"),
    "lr": (lambda x: math.isfinite(x) and x > 0, "learning rates must be > 0"),
}


class SearchConfig(_Strict):
    """The T × alpha (+ lr) search. A list is a grid; ``{low, high, log}`` is a range for the sampler.

    A grid search (T and alpha both lists) trains every cell, and the CE baseline as one more cell, at
    every lr candidate on the same ``replicates`` search seeds: two cells differ in T and alpha, not in lr
    luck or seed luck. A range search (T or alpha a range) lets the sampler draw ``trials`` configurations.
    """

    temperature: Grid | Range = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    alpha: Grid | Range = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    lr: Grid | Range = Field(default_factory=lambda: Range(low=3.0e-4, high=3.0e-3, log=True))
    lr_points: Annotated[int, Field(ge=1, le=20)] = 3  # lr candidates spread over an lr range (grid searches)
    replicates: Annotated[int, Field(ge=1, le=100)] | None = None  # search seeds per cell; default 3 (grid), 1 (range)
    trials: Annotated[int, Field(ge=1)] | None = None  # range searches: KD trials (default 20); CE gets as many
    sampler: Literal["tpe", "random", "grid"] = "tpe"  # range searches; a grid visits every cell
    pruner: Literal["median", "hyperband", "none"] | None = None  # default none (grid), median (range)
    # search trials (students) trained at once by one fused step: auto (on CUDA as many as fit, up to
    # FUSE_AUTO_MAX; sequential on the CPU, where fusing is slower), or K (1 = off; not on the CPU)
    fuse: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    # the distillation methods compared, each tuned on the same budget (cells x lr x replicates) and seeds:
    # kd (Hinton, over temperature x alpha above), dkd, dist, lskd (over their spaces below)
    method: str | Annotated[list[str], Field(min_length=1)] = "kd"
    # per method (not kd): its hyperparameters as grids, ranges or single values; published defaults fill the rest
    spaces: dict[str, dict[str, Space]] = Field(default_factory=dict)
    # epochs of linear ramp of Hinton's KD term (another method's: kd_warmup_epochs in its space; DKD publishes 20)
    kd_warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    # a budget axis: the whole grid at each of these budgets on the same seeds ([1, 3, 9]: epochs, or
    # {steps: [...]}); finalists are chosen at the largest. Default: one budget, the student recipe's
    budget: list[Budget] | None = None
    # visits (training runs) the search may plan before it is refused as a typo; raise it for a real huge grid
    max_visits: Annotated[int, Field(ge=1)] = MAX_VISITS

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_list(cls, v: Any) -> Any:
        if isinstance(v, dict) and len(v) == 1:  # {epochs: [1, 3]} or {steps: [...]}
            unit, values = next(iter(v.items()))
            if isinstance(values, list):
                return [{unit: x} for x in values]
        return v

    @field_validator("budget")
    @classmethod
    def _budgets_distinct(cls, v: list[Budget] | None) -> list[Budget] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("is empty; give at least one budget, e.g. [1, 3, 9] (epochs)")
        if len({b.epochs is None for b in v}) > 1:
            raise ValueError("mixes epochs and steps; give every budget in one unit")
        if len({b.size for b in v}) != len(v):
            raise ValueError("lists a budget twice")
        return sorted(v, key=lambda b: b.size)

    @field_validator("temperature", "alpha", "lr")
    @classmethod
    def _values_in_range(cls, v: list[float] | Range, info: ValidationInfo) -> list[float] | Range:
        ok, message = _VALUE_CHECKS[info.field_name or ""]
        if any(not ok(x) for x in _values(v)):
            raise ValueError(message)
        return v

    @model_validator(mode="after")
    def _methods(self) -> SearchConfig:
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r} in search.method; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"search.method lists a method twice: {self.methods}")
        for m, space in self.spaces.items():
            if m == "kd":
                raise ValueError("search.spaces.kd: Hinton's KD is searched over search.temperature and "
                                 "search.alpha; set those")
            if m not in self.methods:
                raise ValueError(f"search.spaces.{m}: {m!r} is not in search.method ({', '.join(self.methods)}); "
                                 f"add it there or delete this space")
            allowed = ("temperature", "alpha", *WEIGHTS, *METHODS[m].params, "kd_warmup_epochs")
            warmup = space.get("kd_warmup_epochs", 0.0)
            if not isinstance(warmup, float) or not (math.isfinite(warmup) and warmup >= 0):
                raise ValueError(f"search.spaces.{m}.kd_warmup_epochs: one number of epochs >= 0 (not searched), "
                                 f"e.g. 20")
            for key, v in space.items():
                if key not in allowed:
                    owner = [o for o, ps in ((n, r.params) for n, r in METHODS.items()) if key in ps]
                    hint = f"it is a parameter of {owner[0]}" if owner else "unknown parameter"
                    raise ValueError(f"search.spaces.{m}.{key}: {hint}; {m} takes {', '.join(allowed)}")
                vals = _values(v)
                if key == "temperature" and any(not math.isfinite(x) or x <= 0 for x in vals):
                    raise ValueError(f"search.spaces.{m}.temperature: temperatures must be > 0")
                if key == "alpha" and any(not (0.0 <= x <= 1.0) for x in vals):
                    raise ValueError(f"search.spaces.{m}.alpha: alpha values must be in [0, 1]")
                if key != "temperature" and key != "alpha" and any(not math.isfinite(x) or x < 0 for x in vals):
                    raise ValueError(f"search.spaces.{m}.{key}: a weight must be a finite number >= 0")
            if "alpha" in space and any(w in space for w in WEIGHTS):
                raise ValueError(f"search.spaces.{m}: give alpha (ce_weight = alpha, kd_weight = 1 - alpha) or "
                                 "ce_weight and kd_weight, not both")
        return self

    @model_validator(mode="after")
    def _grid_or_range(self) -> SearchConfig:
        ranged = [k for k in ("temperature", "alpha") if isinstance(getattr(self, k), Range)]
        ranged += [f"spaces.{m}.{k}" for m in self.methods if m != "kd"
                   for k, v in self.space(m).items() if isinstance(v, Range)]
        if self.sampler == "grid" and ranged:
            raise ValueError(f"sampler 'grid' needs temperature and alpha as lists; {ranged} are ranges")
        if ranged and self.budget is not None:
            raise ValueError(f"search.budget (a budget axis) needs a grid: temperature and alpha as lists; {ranged} "
                             "are ranges")
        if self.budget is not None and self.pruner == "hyperband":
            raise ValueError("search.pruner: hyperband sizes its brackets to one budget, and search.budget gives "
                             "several; use median or none")
        if ranged and self.replicates not in (None, 1):
            raise ValueError(f"replicates > 1 needs temperature and alpha as lists (a grid); {ranged} are ranges")
        if self.is_grid:  # an equal tuning budget: as many cells for every method
            cells = {m: self.n_cells(m) for m in self.methods}
            if len(set(cells.values())) > 1:
                counts = ", ".join(f"{m}: {n}" for m, n in cells.items())
                raise ValueError(f"search.method: the methods' grids differ in size ({counts} cells); give every "
                                 "method as many cells (search.spaces.<method>), so each gets the same tuning budget")
        return self

    @property
    def methods(self) -> list[str]:
        """The distillation methods of the study (``method`` as a list)."""
        return [self.method] if isinstance(self.method, str) else list(self.method)

    def space(self, method: str) -> dict[str, list[float] | Range]:
        """A method's search space, every parameter a grid or a range: Hinton's KD over temperature and alpha;
        another method over its ``spaces`` entry, its published defaults filling what it does not give (the two weights
        only when it gives no alpha)."""
        if method == "kd":
            return {"temperature": self.temperature, "alpha": self.alpha}
        given = {k: v for k, v in self.spaces.get(method, {}).items() if k != "kd_warmup_epochs"}
        out: dict[str, list[float] | Range] = {}
        for key, default in METHODS[method].defaults.items():
            if key in WEIGHTS and "alpha" in given:
                continue
            v = given.get(key, default)
            out[key] = v if isinstance(v, (list, Range)) else [float(v)]
        if "alpha" in given:
            a = given["alpha"]
            out["alpha"] = a if isinstance(a, (list, Range)) else [float(a)]
        return out

    def warmup_epochs(self, method: str) -> float:
        """Epochs over which a method's distillation term is ramped in (``kd_warmup_epochs``)."""
        if method == "kd":
            return self.kd_warmup_epochs
        return float(self.spaces.get(method, {}).get("kd_warmup_epochs", 0.0))  # type: ignore[arg-type]

    def n_cells(self, method: str) -> int:
        """Cells of a method's grid (the product of its parameters' list lengths)."""
        return math.prod(len(v) for v in self.space(method).values() if isinstance(v, list))

    @property
    def is_grid(self) -> bool:
        """Every method's parameters are lists: every cell is trained at every lr candidate on every replicate seed."""
        return all(isinstance(v, list) for m in self.methods for v in self.space(m).values())

    @property
    def n_replicates(self) -> int:
        """Search seeds per cell (``replicates``, default 3 for a grid and 1 for a range search)."""
        return self.replicates or (GRID_REPLICATES if self.is_grid else 1)

    @property
    def n_trials(self) -> int:
        """Range searches: KD trials (``trials``, default RANGE_TRIALS); the CE baseline gets as many."""
        return self.trials or RANGE_TRIALS

    @property
    def pruner_name(self) -> str:
        """``pruner``, default none for a grid (a pruned cell is no evidence) and median for a range search."""
        return self.pruner or ("none" if self.is_grid else "median")

    def lr_candidates(self) -> list[float] | None:
        """The lr values every cell is trained at (grid searches), or None when the sampler draws lr.

        A list is used as it is; a range becomes ``lr_points`` values spread evenly (on a log scale when
        ``log``) from low to high.
        """
        if isinstance(self.lr, list):
            return sorted(float(x) for x in self.lr)
        if not self.is_grid:
            return None
        lo, hi, n = self.lr.low, self.lr.high, self.lr_points
        if n == 1:
            return [math.sqrt(lo * hi) if self.lr.log else (lo + hi) / 2]
        inner = [lo * (hi / lo) ** (i / (n - 1)) if self.lr.log else lo + (hi - lo) * i / (n - 1)
                 for i in range(1, n - 1)]
        return [lo, *(float(x) for x in inner), hi]  # the ends exactly, so the sampler's range holds them


class BaselineConfig(_Strict):
    """The CE-only student: one more cell of the search, with exactly a KD cell's budget."""

    ce: bool = True


class FinalistsConfig(_Strict):
    """Best configurations re-trained on paired seeds and evaluated on the test set."""

    top_k: Annotated[int, Field(ge=0)] = 1  # best KD configurations (plus the best CE one)
    seeds: Annotated[int, Field(ge=1, lt=SEARCH_SEED_OFFSET)] = 5  # seeds per finalist: seed+1, seed+2, ...
    # what the finalists train for: epochs (20) or {steps: N}; default the search's budget (its largest)
    budget: Budget | None = None
    # a transfer check: this many more configurations per method, spread over the search's ranking, re-trained
    # like the finalists (budget, seeds; validation only) to measure whether the search's ranking holds there
    probe: Annotated[int, Field(ge=0, le=1000)] = 0


class Study(_Strict):
    """A whole study file."""

    name: str
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    finalists: FinalistsConfig = Field(default_factory=FinalistsConfig)

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

    @model_validator(mode="after")
    def _plan_size(self) -> Study:
        n = self.search_visits
        if n > self.search.max_visits:
            raise ValueError(f"search.max_visits: the search plans {n:,} visits (training runs), more than "
                             f"search.max_visits ({self.search.max_visits:,}); shrink the grid (temperature, alpha, "
                             "lr, replicates, budget), or raise search.max_visits if you mean it")
        return self

    @property
    def search_visits(self) -> int:
        """How many visits the search plans (computed, not planned: a huge grid is refused before it is built)."""
        s = self.search
        arms = sum(s.n_cells(m) if s.is_grid else s.n_trials for m in s.methods) + (1 if self.baseline.ce else 0)
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


def parse_study(raw: Any, source: str = "study", overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Validate a raw mapping (as read from YAML) into a :class:`Study`, after applying overrides."""
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
    return study


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read, override and validate a study file.

    Raises:
        ConfigError: one line naming the file, the key and the fix.
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
    return parse_study(raw, str(p), overrides)
