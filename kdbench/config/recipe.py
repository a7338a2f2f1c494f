"""``teacher:`` and ``student:``: how one model is trained (its recipe), and what the teacher adds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from kdbench.config.base import Strict
from kdbench.defaults import MAX_BATCH, MAX_EPOCHS, MAX_STEPS

__all__ = ["Recipe", "StudentConfig", "TeacherConfig"]


class Recipe(Strict):
    """How one model is trained. lr is per optimiser step (not scaled by batch size)."""

    model: str
    """A zoo name (``kdbench.models.list_models()``), ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory``
    or ``path/to/file.py:ClassOrFactory`` (relative to the study file); see ``kdbench/models/sources.py``."""
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | None = 3
    """Epochs: passes over the training split."""
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    """Optimiser steps; overrides ``epochs`` when set."""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 128
    """Samples per optimiser step."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """The optimiser."""
    lr: Annotated[float, Field(gt=0.0)] = 1.0e-3
    """Learning rate per optimiser step (not scaled by batch size); a student's comes from ``search.lr``."""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """SGD momentum (a fraction); sgd only."""
    nesterov: bool = False
    """Nesterov momentum; sgd only."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    """Weight decay per step: L2 (sgd, adam) or decoupled (adamw)."""
    schedule: Literal["constant", "cosine", "step"] = "constant"
    """The lr schedule over the budget."""
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    """Epochs of linear lr warm-up from 0 (fractions allowed)."""
    step_milestones: tuple[float, ...] = Field(default=(0.5, 0.75), json_schema_extra={
        "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}})
    """``step`` schedule: where the lr drops, as increasing fractions of the budget, each in (0, 1)."""
    step_gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """``step`` schedule: the lr's factor at each milestone."""
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Label smoothing (a fraction) on the hard-label CE term."""
    amp: bool = True
    """bf16 autocast on CUDA; ignored on the CPU."""
    channels_last: bool | Literal["auto"] = "auto"
    """channels_last memory format; auto: on for convolutional models on CUDA and the CPU (oneDNN)."""
    compile: bool = False
    """``torch.compile`` the model (once per process)."""
    pretrained: str | None = None
    """A local state-dict file to start from (zoo models)."""
    weights: str | None = None
    """torchvision:/timm: models: pretrained weights from the library's own cache, never downloaded: a torchvision
    weights enum member (``IMAGENET1K_V2``, ``DEFAULT``) or, for timm, ``pretrained``."""
    model_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of a torchvision, timm or your own model (not of a zoo model)."""

    @model_validator(mode="after")
    def _external_keys(self) -> Recipe:
        if ":" not in self.model and (self.weights is not None or self.model_args):
            raise ValueError(f"weights and model_args apply to torchvision:, timm: and your own models, not to the "
                             f"zoo's {self.model!r}; for a zoo model give a state-dict file as pretrained:")
        return self

    @field_validator("step_milestones")
    @classmethod
    def _milestones_in_unit(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (0.0 < m < 1.0) for m in v) or list(v) != sorted(v):
            raise ValueError("must be increasing fractions of the budget, each in (0, 1)")
        return v


class TeacherConfig(Recipe):
    """The teacher: trained once from this recipe (or loaded from ``checkpoint``), then cached."""

    model: str = "cnn-m"
    """The teacher's model: a zoo name, ``torchvision:NAME``, ``timm:NAME`` or an import path (as a recipe's)."""
    checkpoint: str | None = None
    """A state-dict file to load instead of training (read with ``weights_only=True``)."""
    cache: Literal["fixed", "live"] | dict[Literal["views"], Annotated[int, Field(ge=1)]] = "fixed"
    """Teacher logits: ``fixed`` (of the clean images, cached), ``{views: K}`` (K seeded augmented views, cached) or
    ``live`` (a teacher forward every step)."""
    logit_dtype: Literal["float16", "float32"] = "float16"
    """Precision of the cached (and live) logits."""
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """Validation-accuracy floor (a fraction) below which the teacher is refused; default chance plus half the way
    to 1 (0.55 for 10 classes)."""

    @property
    def cache_views(self) -> int:
        """Number of cached augmented views (0 for 'fixed' and 'live')."""
        return self.cache["views"] if isinstance(self.cache, dict) else 0


class StudentConfig(Recipe):
    """The student recipe shared by every trial; lr is searched (``search.lr``)."""

    model: str = "mlp-800"
    """The student's model: a zoo name, ``torchvision:NAME``, ``timm:NAME`` or an import path (as a recipe's)."""
    eval_every: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    """Optimiser steps between validation passes (a curve for a run shorter than an epoch; each pass costs time);
    null: validation at each epoch's end only. Set, validation also runs every this many steps; the last pass
    is at the end of the run either way, and it is the accuracy selection reads."""
