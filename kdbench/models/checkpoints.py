"""Loading a local weights file into a model built by :func:`kdbench.models.build_model`.

Only ``torch.load(weights_only=True)`` reads the file, so a checkpoint can hold tensors and plain
containers, never code. The usual training-checkpoint layouts and ``DataParallel``/``torch.compile``
key prefixes are accepted; anything that does not fit the model strictly (keys, class count, shapes)
is refused with a one-line :class:`~kdbench.errors.CheckpointError` that names the fix.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kdbench.errors import CheckpointError, first_line

__all__ = ["load_state_dict_file"]


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load the weights in ``path`` into ``model``, in place, with strict key and shape checks.

    The file is read with ``torch.load(weights_only=True)``, so it may hold only tensors and plain
    containers, never pickled code. Accepted layouts: a state dict, or a dict wrapping one under
    ``"state_dict"`` or ``"model"`` (the usual training-checkpoint layouts). Key prefixes added by
    ``DataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.

    Args:
        model: the freshly built model to fill.
        path: the weights file.

    Raises:
        CheckpointError: the file is missing or unreadable, is not a plain weights file, or its
            keys or shapes do not match ``model`` (e.g. it was trained for another number of classes).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler raises UnpicklingError both for objects it will not rebuild
        # (a pickled nn.Module, a custom class: "Unsupported global") and for bytes that are no pickle.
        if not any(marker in str(exc) for marker in _WEIGHTS_ONLY_REFUSALS):
            raise CheckpointError(
                f"checkpoint file {path} is not a torch.save file ({_reason(exc)}); "
                "save it with torch.save(model.state_dict(), path)"
            ) from exc
        raise CheckpointError(
            f"checkpoint file {path} is not a plain weights file (torch.load weights_only=True refused it): "
            "save model.state_dict()"
        ) from exc
    except Exception as exc:  # a damaged file can fail deep inside the unpickler with any error
        raise CheckpointError(
            f"checkpoint file {path} cannot be read ({_reason(exc)}); "
            "it may be truncated: save it again with torch.save(model.state_dict(), path)"
        ) from exc

    state = _unwrap_state_dict(obj, path)
    _check_compatible(model, state, path)
    model.load_state_dict(state, strict=True)


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception (``Type`` alone if it has no message)."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name


_WEIGHTS_ONLY_REFUSALS = ("Unsupported global", "can still be loaded")
_WRAPPER_KEYS = ("state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and strip ``DataParallel``/``compile`` key prefixes."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint file {path} holds a {type(obj).__name__}, not a dict of tensors; "
            "save model.state_dict()"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint file {path} is not a dict of tensors (entry {key!r} is a "
                f"{type(value).__name__}); save model.state_dict()"
            )
        state[_strip_prefixes(key)] = value
    return state


def _strip_prefixes(key: str) -> str:
    """Remove any leading ``module.`` / ``_orig_mod.`` (in any order or number) from a state-dict key."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise a one-line CheckpointError if ``state`` cannot be loaded strictly into ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(
            f"checkpoint file {path} does not match the model ({'; '.join(parts)}); "
            "use a checkpoint saved from the same model architecture"
        )

    classifier = _classifier_weight_key(model)
    if classifier is not None and state[classifier].shape != expected[classifier].shape:
        have, want = state[classifier].shape[0], expected[classifier].shape[0]
        raise CheckpointError(
            f"cannot load checkpoint file {path}: the checkpoint has {have} classes, the dataset has {want}; "
            "use a checkpoint trained on this dataset"
        )

    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3])
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise CheckpointError(
            f"checkpoint file {path} has tensors of the wrong shape ({details}{more}; checkpoint vs model); "
            "use a checkpoint of the same model built for the same in_channels"
        )


def _few(keys: list[str], limit: int = 3) -> str:
    """Up to ``limit`` keys, and how many were left out."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _classifier_weight_key(model: nn.Module) -> str | None:
    """The state-dict key of the weight of the last ``nn.Linear`` in ``model`` (its classifier)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return None if last is None else f"{last}.weight"
