"""Visit keys: the one module that builds and parses them (the plan names its visits here, the store parses them
and retires old attempts here).

A key names one planned training run: ``kd/T=2/a=0.5/lr=0.001/r=0`` (a grid cell at one lr on replicate 0),
``.../e=3/r=0`` on a budget axis, ``ce/r=4`` (a range search's trial), ``final/kd/rank=0/seed=1`` (a finalist),
``probe/kd/T=8/a=0.1/lr=0.001/seed=1`` (a probe), ``recheck/kd/T=2/a=0.5/lr=0.002/seed=1`` (a finalist
configuration's lr re-checked at the finalists' budget); a retired attempt keeps its key with ``#<attempt>``.
"""

from __future__ import annotations

import re

__all__ = ["PARAM_COLUMNS", "cell_key", "config_key", "config_name", "finalist_key", "probe_key", "recheck_key",
           "retired_key",
           "search_key"]

PARAM_COLUMNS = ("temperature", "alpha", "lr")  # a run's parameters with columns of their own; the rest: ``params``


def config_name(method: str, values: dict[str, float]) -> str:
    """A configuration's name: ``kd/T=2/a=0.5/lr=0.001``, ``dkd/T=4/ce_weight=1/.../lr=0.001`` (any subset)."""
    if method == "kd":  # Hinton's KD keeps the keys of the studies stored before the other methods came
        return method + "".join(f"/{short}={values[k]:g}" for k, short in
                                (("temperature", "T"), ("alpha", "a"), ("lr", "lr")) if k in values)
    extra = sorted(k for k in values if k not in PARAM_COLUMNS)
    return method + "".join(f"/{k if k != 'temperature' else 'T'}={values[k]:g}"
                            for k in ("temperature", "alpha", *extra, "lr") if k in values)


def search_key(method: str, values: dict[str, float], replicate: int, budget: str | None = None) -> str:
    """A search visit: its configuration, the budget on a budget axis (``e=3``), the replicate."""
    return f"{config_name(method, values)}{f'/{budget}' if budget else ''}/r={replicate}"


def finalist_key(method: str, rank: int, seed: int) -> str:
    """A finalist: the ``rank``-th best configuration of ``method`` (0 = best) on one finalist seed."""
    return f"final/{method}/rank={rank}/seed={seed}"


def probe_key(method: str, values: dict[str, float], seed: int) -> str:
    """A probe: one configuration of the search re-trained like the finalists, on one finalist seed."""
    return f"probe/{config_name(method, values)}/seed={seed}"


def recheck_key(method: str, values: dict[str, float], seed: int) -> str:
    """An lr re-check: a finalist configuration at one lr, trained like the finalists, scored on validation only."""
    return f"recheck/{config_name(method, values)}/seed={seed}"


def retired_key(key: str, attempt: int) -> str:
    """The key an attempt keeps once another takes its visit over."""
    return f"{key}#{attempt}"


def config_key(visit: str) -> str:
    """A search visit's configuration: its key without the replicate (``kd/T=2/a=0.5/lr=0.001``)."""
    return visit.rsplit("/r=", 1)[0]


def cell_key(visit: str) -> str:
    """A search visit's cell: its configuration without the lr (``kd/T=2/a=0.5``)."""
    return re.sub(r"/lr=[^/]*", "", config_key(visit))
