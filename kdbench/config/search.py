"""``search:``, ``baseline:`` and ``finalists:``: what is searched, the CE baseline, and the re-trained finalists."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kdbench.budget import Budget
from kdbench.config.base import Strict
from kdbench.defaults import GRID_REPLICATES, MAX_VISITS, RANGE_TRIALS, SEARCH_SEED_OFFSET
from kdbench.losses import METHODS, WEIGHTS

__all__ = ["BaselineConfig", "FinalistsConfig", "Range", "SearchConfig"]


class Range(Strict):
    """A range handed to the sampler: ``{low, high, log}``."""

    low: float
    """The lowest value (in the parameter's own unit)."""
    high: float
    """The highest value, >= low."""
    log: bool = False
    """Sample on a log scale (needs low > 0)."""

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


# What each searched value must be, as JSON Schema keywords: validation (_within) and the schema (_bounded) both read
# this one table. A method's own parameters and loss weights are WEIGHT_BOUNDS.
BOUNDS: Mapping[str, Mapping[str, float]] = {
    "temperature": {"exclusiveMinimum": 0},
    "alpha": {"minimum": 0, "maximum": 1},
    "lr": {"exclusiveMinimum": 0},
}
WEIGHT_BOUNDS: Mapping[str, float] = {"minimum": 0}
_MESSAGES = {"temperature": "temperatures must be > 0",
             "alpha": "alpha values must be in [0, 1] (the weight of the hard labels)",
             "lr": "learning rates must be > 0"}


def _within(x: float, bounds: Mapping[str, float]) -> bool:
    return (math.isfinite(x) and x >= bounds.get("minimum", -math.inf) and x <= bounds.get("maximum", math.inf)
            and x > bounds.get("exclusiveMinimum", -math.inf))


def _bounded(bounds: Mapping[str, float]) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` putting ``bounds`` on every number a space holds: a grid's items, a range's ends."""

    def extra(schema: dict[str, Any]) -> None:
        for alt in schema.get("anyOf", [schema]):
            if alt.get("type") == "array":
                alt["items"].update(bounds)
            elif alt.get("type") == "number":
                alt.update(bounds)
            elif "$ref" in alt:  # a Range: its ends bounded here, where the parameter is known
                ref = alt.pop("$ref")
                alt["allOf"] = [{"$ref": ref}, {"properties": {"low": dict(bounds), "high": dict(bounds)}}]

    return extra


def _method_names(schema: dict[str, Any]) -> None:
    names = list(METHODS)
    for alt in schema["anyOf"]:
        target = alt["items"] if alt.get("type") == "array" else alt
        target["enum"] = names
        if alt.get("type") == "array":
            alt["uniqueItems"] = True


def _method_spaces(schema: dict[str, Any]) -> None:
    """``spaces``: for each method but kd, the parameters it takes, each with its bounds (see ``_methods``)."""
    space = schema["additionalProperties"]["additionalProperties"]
    schema["additionalProperties"] = False
    schema["properties"] = {}
    for m in METHODS:
        if m == "kd":
            continue
        props: dict[str, Any] = {}
        published = METHODS[m].defaults
        for key in ("temperature", "alpha", *WEIGHTS, *METHODS[m].params):
            props[key] = copy.deepcopy(space)
            _bounded(BOUNDS.get(key, WEIGHT_BOUNDS))(props[key])
            props[key]["description"] = (f"published default {published[key]:g}" if key in published else
                                         "the weight of the hard labels (ce_weight = alpha, kd_weight = 1 - alpha)")
        props["kd_warmup_epochs"] = {"type": "number", "minimum": 0,
                                     "description": "epochs of linear ramp of the method's term (not searched)"}
        schema["properties"][m] = {"type": "object", "additionalProperties": False, "properties": props,
                                   "description": f"{METHODS[m].title}'s space: lists are grids, unlisted keys take "
                                                  "their published values"}


def _budget_axis(schema: dict[str, Any]) -> None:
    """``search.budget`` also reads ``{epochs: [...]}`` and ``{steps: [...]}`` (see ``_budget_list``)."""
    schema["anyOf"].insert(1, {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                               "properties": {u: {"type": "array", "minItems": 1,
                                                  "items": {"type": "integer", "minimum": 1}}
                                              for u in ("epochs", "steps")}})


class SearchConfig(Strict):
    """The T × alpha (+ lr) search. A list is a grid; ``{low, high, log}`` is a range for the sampler.

    A grid search (T and alpha both lists) trains every cell, and the CE baseline as one more cell, at
    every lr candidate on the same ``replicates`` search seeds: two cells differ in T and alpha, not in lr
    luck or seed luck. A range search (T or alpha a range) lets the sampler draw ``trials`` configurations.
    """

    temperature: Grid | Range = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0],
                                      json_schema_extra=_bounded(BOUNDS["temperature"]))
    """Hinton's KD temperature T, > 0: a list is a grid, ``{low, high, log}`` a range for the sampler."""
    alpha: Grid | Range = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9],
                                json_schema_extra=_bounded(BOUNDS["alpha"]))
    """The weight of the hard labels, in [0, 1] (alpha = 1 is plain CE): a list is a grid, a mapping a range."""
    lr: Grid | Range = Field(default_factory=lambda: Range(low=3.0e-4, high=3.0e-3, log=True),
                             json_schema_extra=_bounded(BOUNDS["lr"]))
    """Student learning rate per optimiser step, > 0: a list is crossed with every cell; a range gives ``lr_points``
    values (grid searches) or is sampled (range searches)."""
    lr_points: Annotated[int, Field(ge=1, le=20)] = 3
    """lr candidates spread over an lr range (grid searches), on a log scale when the range is ``log``."""
    lr_extend: Annotated[int, Field(ge=0, le=10)] = 2
    """Grid searches: lr values per side by which an arm's best cell is extended (by the list's own ratio at that
    end) while its best lr is an end of the list (``kdbench/sweep/extend.py``); 0: never extended."""
    replicates: Annotated[int, Field(ge=1, le=100)] | None = None
    """Search seeds per cell, shared by every cell and CE; default 3 (grid), 1 (range)."""
    trials: Annotated[int, Field(ge=1)] | None = None
    """Range searches: sampler trials per method (default 20); CE gets as many."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """Range searches: Optuna's sampler; a grid visits every cell."""
    pruner: Literal["median", "hyperband", "none"] | None = None
    """Optuna's pruner; default none (grid), median (range)."""
    fuse: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    """Search trials (students) trained at once by one fused step: auto (on CUDA as many as fit, up to 64;
    sequential on the CPU, where fusing is slower), or K (1 = off; not applied on the CPU)."""
    method: str | Annotated[list[str], Field(min_length=1)] = Field(default="kd", json_schema_extra=_method_names)
    """The distillation methods compared, each tuned on the same budget (cells x lr x replicates) and seeds: kd
    (Hinton, over temperature x alpha), dkd, dist, lskd (over their ``spaces``)."""
    spaces: dict[str, dict[str, Space]] = Field(default_factory=dict, json_schema_extra=_method_spaces)
    """Per method but kd: its hyperparameters (temperature, alpha or ce_weight + kd_weight, its own) as grids,
    ranges or single values, and kd_warmup_epochs; published defaults fill the rest."""
    kd_warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    """Epochs of linear ramp of Hinton's KD term (another method's: ``kd_warmup_epochs`` in its space)."""
    budget: list[Budget] | None = Field(default=None, json_schema_extra=_budget_axis)
    """A budget axis: the whole grid at each of these budgets on the same seeds (``[1, 3, 9]``: epochs, or
    ``{steps: [...]}``); finalists are chosen at the largest. Default: one budget, the student recipe's."""
    max_visits: Annotated[int, Field(ge=1)] = MAX_VISITS
    """Visits (training runs) the search may plan; more is refused before anything is trained (a typo such as 3000
    temperatures); raise it for a real huge grid."""

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
        name = info.field_name or ""
        if any(not _within(x, BOUNDS[name]) for x in _values(v)):
            raise ValueError(_MESSAGES[name])
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
                if any(not _within(x, BOUNDS.get(key, WEIGHT_BOUNDS)) for x in vals):
                    what = {"temperature": "temperatures must be > 0", "alpha": "alpha values must be in [0, 1]"}.get(
                        key, "a weight must be a finite number >= 0")
                    raise ValueError(f"search.spaces.{m}.{key}: {what}")
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

    def lr_beyond(self, side: Literal["low", "high"], step: int) -> float | None:
        """The ``step``-th lr beyond an end of :meth:`lr_candidates` (``step`` >= 1), by the list's own ratio at
        that end (``[2.5e-4, 1e-3, 4e-3]``: ``lr_beyond("low", 1)`` is 6.25e-5, ``lr_beyond("high", 2)`` 6.4e-2);
        None for a range search or a single candidate (no ratio)."""
        lrs = self.lr_candidates()
        if lrs is None or len(lrs) < 2:
            return None
        x = lrs[0] * (lrs[0] / lrs[1]) ** step if side == "low" else lrs[-1] * (lrs[-1] / lrs[-2]) ** step
        return float(f"{x:.12g}")  # 0.009, not 0.009000000000000001: the value stored is the value named


class BaselineConfig(Strict):
    """The baselines without a teacher: CE, and CE with label smoothing, each with exactly a KD cell's budget.

    Label smoothing is the baseline KD's gain is often partly owed to (Yuan et al., CVPR 2020, "Revisiting
    knowledge distillation via label smoothing regularization"): an arm ``ce_ls`` whose cells are the values
    listed, tuned like CE (the same lr candidates, seeds and lr extension), so the verdict compares KD with the
    better baseline on validation.
    """

    ce: bool = True
    """Train the CE baseline (alpha = 1) as one more cell, on the same lr candidates and seeds."""
    label_smoothing: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(default_factory=list)
    """Label-smoothed CE baselines: each epsilon in [0, 1) one more cell of the arm ``ce_ls`` (torch's
    ``cross_entropy(..., label_smoothing=epsilon)``), on the same lr candidates and seeds; ``[]``: none."""

    @field_validator("label_smoothing", mode="before")
    @classmethod
    def _epsilons(cls, v: Any) -> Any:
        values = v if isinstance(v, list) else [v]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not (0.0 <= x < 1.0) for x in values):
            raise ValueError("each label smoothing epsilon must be a number in [0, 1) (0.1 is usual)")
        if len(set(values)) != len(values):
            raise ValueError("lists an epsilon twice; give each once")
        return sorted(float(x) for x in values)


class FinalistsConfig(Strict):
    """Best configurations re-trained on paired seeds and evaluated on the test set."""

    top_k: Annotated[int, Field(ge=0)] = 1
    """Best configurations of each method re-trained (plus the best CE one)."""
    seeds: Annotated[int, Field(ge=1, lt=SEARCH_SEED_OFFSET)] = 5
    """Fresh seeds per finalist, shared by every finalist: seed+1, seed+2, ..."""
    budget: Budget | None = None
    """What the finalists (and probes) train for: epochs (``15``) or ``{steps: N}``; default the search's (its
    largest)."""
    lr_recheck: bool = False
    """Grid searches: before the test set is touched, each finalist configuration is trained at ``budget`` on the
    finalist seeds at its chosen lr and the lrs beside it (its cell's, or by the list's ratio past an end), scored
    on validation only, and its finalists take the best of them (``kdbench/sweep/recheck.py``): the lr chosen on a
    short search may not be the best at the finalists' budget."""
    probe: Annotated[int, Field(ge=0, le=1000)] = 0
    """A transfer check: this many more configurations per method, spread over the search's ranking, re-trained like
    the finalists (budget, seeds) and scored on validation only."""
