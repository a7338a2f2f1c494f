"""A training budget (epochs or optimiser steps): what a recipe, a search budget axis and the finalists train for."""

from __future__ import annotations

from typing import Annotated, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdbench.defaults import MAX_EPOCHS, MAX_STEPS

__all__ = ["Budget"]


class _Recipe(Protocol):
    @property
    def epochs(self) -> int | None: ...
    @property
    def steps(self) -> int | None: ...


R = TypeVar("R", bound=BaseModel)


def _one_unit_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema of what validation takes: a number of epochs, or a mapping giving exactly one unit."""
    mapping = {**schema, "oneOf": [{"required": [unit], "properties": {unit: {"type": "integer"}}}
                                   for unit in ("epochs", "steps")]}
    number = {"type": "integer", "minimum": 1, "maximum": MAX_EPOCHS, "description": "epochs"}
    schema.clear()
    schema.update(anyOf=[number, mapping], title=mapping.pop("title"), description=mapping.pop("description"))


class Budget(BaseModel):
    """A training budget: ``epochs`` (passes over the training split) or optimiser ``steps``, one of them; a bare
    number is epochs."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True,
                              json_schema_extra=_one_unit_schema)

    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] | None = None
    """Epochs: passes over the training split."""
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    """Optimiser steps."""

    @model_validator(mode="before")
    @classmethod
    def _number_is_epochs(cls, v: Any) -> Any:
        return {"epochs": v} if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _one_unit(self) -> Budget:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give epochs or steps (one of them), e.g. {epochs: 20}")
        return self

    @classmethod
    def of(cls, recipe: _Recipe) -> Budget:
        """A recipe's budget (its ``steps`` when set, else its ``epochs``)."""
        return cls(steps=recipe.steps) if recipe.steps is not None else cls(epochs=recipe.epochs or 1)

    @property
    def label(self) -> str:
        """``3 epochs``, ``200 steps``: the budget in words, as figures and the store state it."""
        n, unit = (self.epochs, "epoch") if self.epochs is not None else (self.steps, "step")
        return f"{n} {unit}{'s' if n != 1 else ''}"

    @property
    def key(self) -> str:
        """The budget in a visit key: ``e=3``, ``s=200``."""
        return f"e={self.epochs}" if self.epochs is not None else f"s={self.steps}"

    @property
    def size(self) -> int:
        """The number in the budget's unit (to order budgets of one unit)."""
        return self.epochs if self.epochs is not None else self.steps  # type: ignore[return-value]

    def apply(self, recipe: R) -> R:
        """The recipe trained for this budget (its lr schedule and warm-up stretch over it)."""
        return recipe.model_copy(update={"epochs": self.epochs, "steps": self.steps})
