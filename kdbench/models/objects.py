"""A user's own Python objects as models: an ``nn.Module`` class or factory, or a trained ``nn.Module``.

What :func:`kdbench.sweep` (:mod:`kdbench.api`) takes as ``teacher=`` / ``student=``. Each becomes a
:class:`ModelObject`: a :class:`~kdbench.models.zoo.ModelSpec` that builds it (so the sweep builds it like any
other model) and a fingerprint, what the study hash and the teacher cache key hold in place of an import path's
(:func:`~kdbench.models.sources.model_fingerprint`):

* a class or factory: its parameter names and shapes (built once for the data), ``model_args``, and a digest of
  the source of the factory and of every class of the built model's MRO outside torch (``inspect.getsource``;
  where the source cannot be read, as for a class defined in a notebook cell on Python 3.11, the sources of its
  functions, else their bytecode), so an edited class is a new study, never a silent resume;
* a trained module (the teacher only): the same, plus a digest of its ``state_dict``: another trained teacher is
  another teacher. It is evaluated and its logits cached like a ``teacher.checkpoint``, never trained again.

Objects live in this process only: ``--workers`` and other machines need the import-path form
(``"nets.py:Student"``, ``"package.module:factory"``) of the same thing, which any process can import.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdbench.errors import ConfigError, first_line
from kdbench.models.sources import OBJECT_PREFIX, check_output, data_arguments
from kdbench.models.zoo import ModelSpec

__all__ = ["ModelObject", "model_object", "object_name"]


@dataclass(frozen=True)
class ModelObject:
    """A user's model object as kdbench builds and identifies it.

    Attributes:
        name: the model string the study stores, ``object:<qualified name>`` (a name; not the identity).
        spec: builds it for the data (a fresh model per call; for a trained module, a copy of it).
        fingerprint: 16 hex digits of what defines it (see the module docstring).
        architecture: 16 hex digits of its parameters' names and shapes.
        trained: a trained module: loaded, never trained.
    """

    name: str
    spec: ModelSpec
    fingerprint: str
    architecture: str
    trained: bool


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _code_digest(code: Any) -> str:
    """The bytecode, constants and names of a code object and those nested in it."""
    parts = [code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for const in code.co_consts:
        parts.append(_code_digest(const) if inspect.iscode(const) else repr(const))
    return _digest("|".join(parts))


def _source(obj: Any) -> str:
    """A digest of ``obj``'s source (a class's or a function's); where it cannot be read, of its functions'."""
    try:
        return _digest(inspect.getsource(obj))
    except (OSError, TypeError):
        pass
    if inspect.isclass(obj):
        parts = [obj.__qualname__, *(b.__qualname__ for b in obj.__bases__)]
        for key, member in sorted(vars(obj).items()):
            fn = getattr(member, "__func__", member)
            if inspect.isfunction(fn):
                parts.append(f"{key}={_source(fn)}")
            elif not key.startswith("__"):  # a class attribute's repr, less any address (not stable across runs)
                parts.append(f"{key}={re.sub(r' at 0x[0-9a-fA-F]+', '', repr(member))}")
        return _digest("\n".join(parts))
    code = getattr(obj, "__code__", None)
    return _code_digest(code) if code is not None else _digest(repr(obj))


def _user_classes(model: nn.Module) -> list[type]:
    return [c for c in type(model).__mro__ if c is not object and c.__module__.split(".")[0] != "torch"]


def _shapes(model: nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def _state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        t = value.detach().cpu()
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        # its bytes (a 0-d buffer, as BatchNorm's step count, made 1-d first: a view changes no element size there)
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def object_name(obj: Any) -> str:
    """The model string a study holds for ``obj``: ``object:`` and the qualified name of the class or factory (of
    the module's class for a module)."""
    target = type(obj) if isinstance(obj, nn.Module) or not callable(obj) else obj
    return f"{OBJECT_PREFIX}{getattr(target, '__qualname__', None) or type(target).__qualname__}"


def model_object(section: str, obj: Any, *, in_channels: int, num_classes: int, image_size: int,
                 model_args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
                 input_dtype: torch.dtype = torch.float32) -> ModelObject:
    """The :class:`ModelObject` of ``obj`` given as the study's ``section`` (``teacher`` or ``student``), built
    once for the data and checked: it must be an ``nn.Module`` class or factory (or, for the teacher, a trained
    module) whose output for a ``[2, C, H, W]`` batch (data that are not images: ``[2, *input_shape]`` of
    ``input_dtype``, see :attr:`kdbench.data.DatasetInfo.model_shape`) is ``[2, classes]`` logits.

    Raises:
        ConfigError: one line naming ``section`` and the fix.
    """
    args = dict(model_args or {})
    dims: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    if input_shape is not None:
        dims["input_shape"] = input_shape
    if isinstance(obj, nn.Module):
        if section != "teacher":
            raise ConfigError(f"{section}=: got a {type(obj).__name__} instance; give its class (or a zero-argument "
                              "factory): each trial trains fresh weights")
        if args:
            raise ConfigError(f"{section}.model_args: apply to a class or factory, not to the trained module given as "
                              f"{section}=; drop them")
        name = object_name(obj)
        module = obj
        trained = True
        sources = [_source(c) for c in _user_classes(module)]

        def build_copy(in_channels: int, num_classes: int, image_size: int, **_: Any) -> nn.Module:
            return copy.deepcopy(module).cpu().train()

        builder: Callable[..., nn.Module] = build_copy
    elif callable(obj):
        name = object_name(obj)
        qualname = name.removeprefix(OBJECT_PREFIX)
        trained = False
        target = obj

        def build_new(in_channels: int, num_classes: int, image_size: int,
                      input_shape: tuple[int, ...] | None = None, **_: Any) -> nn.Module:
            kwargs = data_arguments(target, {"in_channels": in_channels, "num_classes": num_classes,
                                             "image_size": image_size, "input_shape": input_shape}, args)
            try:
                return target(**kwargs, **args)
            except Exception as exc:  # the user's constructor: any error is bad input
                how = f"{qualname}(**{section}.model_args)" if args else f"{qualname}()"
                raise ConfigError(f"{section}=: {how} raised {type(exc).__name__}: {first_line(exc)}") from None

        builder = build_new
        module = build_new(**dims)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{section}=: {qualname} returned a {type(module).__name__}, not a torch.nn.Module; "
                              f"give an nn.Module class or a factory returning one")
        if build_new(**dims) is module:  # a factory handing out one module: every trial would share its weights
            raise ConfigError(f"{section}=: {qualname} returned the same module twice; it must build a new one on each "
                              "call (each trial trains fresh weights); to give a trained teacher, pass the module "
                              "itself as teacher=")
        sources = [_source(obj), *(_source(c) for c in _user_classes(module))]
    else:
        raise ConfigError(f"{section}=: got a {type(obj).__name__}; give an nn.Module class, a zero-argument factory"
                          f"{', a trained nn.Module' if section == 'teacher' else ''} or a model name / import path "
                          "such as 'nets.py:Student'")
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if device.type != "cpu" and not trained:
        module = module.cpu()
    try:
        check_output(name, copy.deepcopy(module).cpu() if trained else module, in_channels, num_classes, image_size,
                     input_shape, input_dtype)
    except ConfigError as exc:
        raise ConfigError(f"{section}=: {exc}") from None
    shapes = _shapes(module)
    architecture = _digest(json.dumps(shapes))[:16]
    blob: dict[str, Any] = {"model": name, "args": args, "sources": sources, "shapes": shapes}
    if trained:
        blob["state"] = _state_digest(module)
    fingerprint = _digest(json.dumps(blob, sort_keys=True, default=str))[:16]
    spec = ModelSpec(name=name, builder=builder, family="object", convolutional=True,
                     summary=f"{name} (a Python object given to kdbench.sweep)", source=name)
    return ModelObject(name, spec, fingerprint, architecture, trained)
