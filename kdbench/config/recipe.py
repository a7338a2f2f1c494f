"""``teacher:`` and ``student:``: how one model is trained (its recipe), and what the teacher adds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from kdbench.config.base import Strict
from kdbench.defaults import MAX_BATCH, MAX_EPOCHS, MAX_STEPS

__all__ = ["Recipe", "StudentConfig", "TeacherConfig"]


class Recipe(Strict):
    """How one model is trained. lr is per optimiser step (not scaled by batch size)."""

    # a zoo name (kdbench.models.list_models()), torchvision:NAME, timm:NAME, package.module:factory or
    # path/to/file.py:ClassOrFactory (relative to the study file); see kdbench/models/sources.py
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
    # torchvision:/timm: models: pretrained weights from the library's own cache, never downloaded: a torchvision
    # weights enum member (IMAGENET1K_V2, DEFAULT) or, for timm, "pretrained"
    weights: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of a torchvision/timm/user model

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
