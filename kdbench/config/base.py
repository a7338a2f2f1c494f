"""What every section of the study schema shares: strict frozen models, and the test for a geometric grid."""

from __future__ import annotations

import itertools
import math

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict", "is_geometric"]


def is_geometric(values: list[float]) -> bool:
    """True for three or more positive values with a constant ratio (T = 1, 2, 4, 8).

    Such a grid is searched (and drawn) on a log scale; alpha = 0.1, 0.3, ..., 0.9 is not geometric.
    """
    v = sorted(float(x) for x in values)
    if len(v) < 3 or v[0] <= 0:
        return False
    steps = [math.log(b / a) for a, b in itertools.pairwise(v)]
    return steps[0] > 0 and all(math.isclose(x, steps[0], rel_tol=0.05) for x in steps)


class Strict(BaseModel):
    """A section of the study file: unknown keys are errors, values frozen once read.

    Each field's docstring (the string under it) is its description in the JSON Schema (``kdbench schema``) and in
    the generated study reference: what the key means and its unit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True)
