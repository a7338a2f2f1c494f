"""Models from outside the zoo: torchvision's and timm's classifiers, and a user's own ``nn.Module``.

A study's ``teacher.model`` / ``student.model`` is a zoo name (:mod:`~kdbench.models.zoo`), or:

* ``torchvision:NAME``: ``torchvision.models.get_model(NAME)``, any of ``torchvision.models.list_models()``;
  ``weights:`` a weights enum member (``IMAGENET1K_V2``, ``DEFAULT``) loaded from torchvision's own cache
  (``$TORCH_HOME/hub/checkpoints/<the file its URL names>``), never downloaded;
* ``timm:NAME``: ``timm.create_model(NAME, num_classes=..., in_chans=...)``; ``weights: pretrained`` loads timm's
  pretrained weights from the Hugging Face cache only (``HF_HUB_OFFLINE``), never downloaded;
* ``package.module:factory`` or ``path/to/file.py:ClassOrFactory`` (a path relative to the study file): the
  user's code, called with ``model_args`` as keyword arguments.

Each becomes a :class:`~kdbench.models.zoo.ModelSpec` (:func:`resolve_model`), so it is built like a zoo model:
the classifier head is replaced for the data's classes and 1-channel input adapted (torchvision: the first
convolution's pretrained weights summed over their input channels, as timm does; timm: ``in_chans``), and every
built model is checked on a ``[2, C, H, W]`` batch: it must return ``[2, classes]`` logits. Every failure is a
:class:`~kdbench.errors.ConfigError` of one line. :func:`model_fingerprint` is what enters the study hash and the
teacher cache key: the model string, its weights and arguments, and a digest of the defining source (the user's
file by content; for a library, its version), so an edited model is a new study, never a silent resume.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.errors import ConfigError, first_line

__all__ = ["OBJECT_PREFIX", "check_output", "data_arguments", "is_external", "model_fingerprint", "resolve_model",
           "study_fingerprint", "study_model"]

_LIBRARIES = ("torchvision", "timm")
OBJECT_PREFIX = "object:"  # a Python object given to kdbench.sweep (kdbench.models.objects): this process only


def is_external(model: str) -> bool:
    """Whether ``model`` names a model outside the zoo (it has a ``:``)."""
    return ":" in model


def _split(model: str) -> tuple[str, str]:
    if model.startswith(OBJECT_PREFIX):
        raise ConfigError(f"model {model!r} names a Python object given to kdbench.sweep in the process that ran it; "
                          "in a study file, or for --workers, give its import path, e.g. 'nets.py:Student' or "
                          "'package.module:factory'")
    where, _, name = model.rpartition(":")
    if not where or not name:
        raise ConfigError(f"model {model!r}: write torchvision:NAME, timm:NAME, package.module:factory or "
                          "path/to/file.py:ClassOrFactory")
    return where, name


def _user_file(where: str, folder: Path | None) -> Path:
    path = Path(where).expanduser()
    return path if path.is_absolute() else (folder or Path.cwd()) / path


def model_fingerprint(model: str, weights: str | None, model_args: dict[str, Any], folder: Path | None) -> str:
    """A 16-hex-digit digest of what defines an external model: the model string, its weights and arguments,
    and its defining source: a ``.py`` file's bytes, a module's source file's bytes, a library's version.

    Raises:
        ConfigError: the file or module cannot be found (one line naming it).
    """
    where, _ = _split(model)
    if where in _LIBRARIES:
        from importlib import metadata

        try:
            source = f"{where} {metadata.version(where)}"
        except metadata.PackageNotFoundError:
            raise ConfigError(f"model {model!r}: {where} is not installed; pip install {where}") from None
    elif where.endswith(".py"):
        path = _user_file(where, folder)
        if not path.is_file():
            raise ConfigError(f"model {model!r}: file {path} not found (a path relative to the study file)")
        source = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        try:
            spec = importlib.util.find_spec(where)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"model {model!r}: module {where} cannot be imported ({first_line(exc)})") from None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise ConfigError(f"model {model!r}: no module named {where!r} (is its package installed, or on "
                              "PYTHONPATH?)")
        source = hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()
    blob = json.dumps({"model": model, "weights": weights, "args": model_args, "source": source}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def study_model(study: Any, section: str) -> Any:
    """What builds the study's ``section`` model (``teacher`` or ``student``): the
    :class:`~kdbench.models.zoo.ModelSpec` of an object given to kdbench.sweep, else the model string."""
    obj = study.model_object(section)
    return getattr(study, section).model if obj is None else obj.spec


def study_fingerprint(study: Any, section: str) -> str:
    """The fingerprint of the study's ``section`` model from outside the zoo: an object's
    (:mod:`kdbench.models.objects`), else :func:`model_fingerprint` of its model string."""
    obj = study.model_object(section)
    if obj is not None:
        return str(obj.fingerprint)
    r = getattr(study, section)
    return model_fingerprint(r.model, r.weights, r.model_args, study.folder)


def resolve_model(model: str, *, weights: str | None = None, model_args: dict[str, Any] | None = None,
                  folder: Path | None = None) -> Any:
    """The :class:`~kdbench.models.zoo.ModelSpec` of an external model (see the module docstring).

    Raises:
        ConfigError: an unknown library model (close names suggested), an import path that does not import,
            a name that is not callable, or ``weights`` given where they cannot apply.
    """
    from kdbench.models.zoo import ModelSpec  # the zoo imports nothing of this module

    where, name = _split(model)
    args = dict(model_args or {})
    if where == "torchvision":
        builder = _torchvision(name, weights, args)
        family = "torchvision"
    elif where == "timm":
        builder = _timm(name, weights, args)
        family = "timm"
    else:
        if weights is not None:
            raise ConfigError(f"model {model!r}: weights: applies to torchvision: and timm: models; load your own "
                              "weights in your factory, or give a state-dict file as pretrained:")
        builder = _user(model, where, name, args, folder)
        family = "user"
    return ModelSpec(name=model, builder=_checked(model, builder), family=family, convolutional=True,
                     summary=f"{model} ({family})", source=model)


def check_output(model_name: str, model: nn.Module, in_channels: int, num_classes: int, image_size: int,
                 input_shape: tuple[int, ...] | None = None, input_dtype: torch.dtype = torch.float32) -> None:
    """Refuse a model that does not map a ``[2, C, H, W]`` batch (or, for inputs that are not images, a
    ``[2, *input_shape]`` batch of ``input_dtype``) to ``[2, classes]`` logits (one line)."""
    shape = (2, *input_shape) if input_shape is not None else (2, in_channels, image_size, image_size)
    batch = f"[{', '.join(map(str, shape))}]" + ("" if input_shape is None else f" {str(input_dtype).split('.')[-1]}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape, dtype=input_dtype if input_shape is not None else torch.float32))
    except Exception as exc:  # the user's forward: any error is bad input
        raise ConfigError(f"model {model_name!r} fails on a {batch} batch of the data: {type(exc).__name__}: "
                          f"{first_line(exc)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {model_name!r} returned {got} for a {batch} batch; it must return "
                          f"[batch, classes] = (2, {num_classes}) logits")


def _checked(model_name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, image_size: int, input_shape: tuple[int, ...] | None = None,
              input_dtype: torch.dtype = torch.float32) -> nn.Module:
        extra = {} if input_shape is None else {"input_shape": input_shape}
        model = builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **extra)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {model_name!r} built a {type(model).__name__}, not a torch.nn.Module")
        check_output(model_name, model, in_channels, num_classes, image_size, input_shape, input_dtype)
        return model

    return build


# ---------------------------------------------------------------------------------------------- torchvision


def _torchvision(name: str, weights: str | None, args: dict[str, Any]) -> Callable[..., nn.Module]:
    import torchvision.models as tvm  # imported only for a torchvision: model

    known = tvm.list_models(module=tvm)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise ConfigError(f"model 'torchvision:{name}' is not a torchvision classifier{hint}")
    enum = None
    if weights is not None:
        members = tvm.get_model_weights(name)
        try:
            enum = members.DEFAULT if weights == "DEFAULT" else members[weights]
        except KeyError:
            raise ConfigError(f"weights: {weights!r} is not one of torchvision:{name}'s: "
                              f"{', '.join(['DEFAULT', *members.__members__])}") from None

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        model = tvm.get_model(name, weights=None, **args)
        if enum is not None:
            model.load_state_dict(_cached_state(enum, f"torchvision:{name}"))
        _replace_head(model, num_classes, f"torchvision:{name}")
        if in_channels != 3:
            _adapt_channels(model, in_channels, f"torchvision:{name}")
        return model

    return build


def _cached_state(enum: Any, model_name: str) -> dict[str, torch.Tensor]:
    """The weights file torchvision would download, from its own cache only."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    path = hub / Path(enum.url).name
    if not path.is_file():
        raise ConfigError(f"{model_name} weights {enum}: {path} not found and kdbench never downloads; put the file "
                          f"from {enum.url} there (or set $TORCH_HOME to a folder whose hub/checkpoints/ holds it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{model_name} weights {path}: not a loadable state dict ({first_line(exc)})") from None
    return state


def _replace_head(model: nn.Module, num_classes: int, model_name: str) -> None:
    """Replace the last linear layer (``fc``, ``classifier[-1]``, ``heads.head``, ``head``) for ``num_classes``."""
    for path in ("fc", "classifier", "heads.head", "head", "classifier.fc"):
        parent, attr, layer = _find(model, path)
        if isinstance(layer, nn.Sequential):
            idx = max((i for i, m in enumerate(layer) if isinstance(m, (nn.Linear, nn.Conv2d))), default=None)
            if idx is None:
                continue
            parent, attr, layer = layer, str(idx), layer[idx]
        if isinstance(layer, nn.Linear):
            if layer.out_features != num_classes:
                setattr(parent, attr, nn.Linear(layer.in_features, num_classes))
            return
        if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):  # SqueezeNet's classifier
            if layer.out_channels != num_classes:
                setattr(parent, attr, nn.Conv2d(layer.in_channels, num_classes, 1))
            return
    raise ConfigError(f"{model_name}: no classifier head to replace (looked for a Linear at fc, classifier, "
                      "heads.head or head); use your own factory that returns [batch, classes] logits")


def _find(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module | None]:
    parent: nn.Module = model
    *parents, attr = path.split(".")
    for p in parents:
        child = getattr(parent, p, None)
        if not isinstance(child, nn.Module):
            return model, attr, None
        parent = child
    layer = getattr(parent, attr, None)
    return parent, attr, layer if isinstance(layer, nn.Module) else None


def _adapt_channels(model: nn.Module, in_channels: int, model_name: str) -> None:
    """Make the first 3-channel convolution take ``in_channels``: its weights summed over the RGB channels (then
    repeated and scaled by 3 / in_channels for more than 3), timm's rule for pretrained weights."""
    for parent in model.modules():
        for attr, conv in parent.named_children():
            if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
                new = copy.deepcopy(conv)
                with torch.no_grad():
                    w = conv.weight
                    if in_channels == 1:
                        adapted = w.sum(dim=1, keepdim=True)
                    else:
                        adapted = w.repeat(1, -(-in_channels // 3), 1, 1)[:, :in_channels] * (3 / in_channels)
                new.in_channels = in_channels
                new.weight = nn.Parameter(adapted.contiguous())
                setattr(parent, attr, new)
                return
    raise ConfigError(f"{model_name}: no 3-channel first convolution to adapt to {in_channels}-channel images")


# ---------------------------------------------------------------------------------------------- timm


def _timm(name: str, weights: str | None, args: dict[str, Any]) -> Callable[..., nn.Module]:
    try:
        import timm
    except ImportError:
        raise ConfigError("model 'timm:...' needs timm: pip install timm (or kdbench[timm])") from None
    known = timm.list_models()
    base = name.split(".")[0]
    if base not in known:
        close = difflib.get_close_matches(base, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"model 'timm:{name}' is not a timm model{hint}")
    if weights not in (None, "pretrained"):
        raise ConfigError(f"weights: {weights!r} for timm:{name}: write weights: pretrained (a tag goes in the "
                          "name, e.g. timm:resnet18.a1_in1k)")

    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_channels, **args)
        if weights is None:
            return timm.create_model(name, pretrained=False, **kwargs)
        file = _timm_cached_file(timm, name)  # timm then loads that file itself: no hub, no network
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kwargs)

    return build


def _timm_cached_file(timm: Any, name: str) -> Path:
    """The file of timm's pretrained weights for ``name`` in the Hugging Face cache, or one line saying it is not."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ConfigError(f"timm:{name} has no pretrained weights on the Hugging Face hub that timm knows of; "
                          "drop weights:, or give a state-dict file as pretrained:")
    # the cache as the environment names it now (huggingface_hub reads it once, at its import)
    home = os.environ.get("HF_HUB_CACHE") or (str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME")
                                              else None)
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename, cache_dir=home)
        if isinstance(found, str):
            return Path(found)
    home = home or "~/.cache/huggingface/hub"
    raise ConfigError(f"timm:{name} pretrained weights ({hub_id}/model.safetensors) are not in the Hugging Face cache "
                      f"({home}) and kdbench never downloads; fetch them once on a machine with network "
                      f"(timm.create_model({name!r}, pretrained=True)) and copy that cache here")


# ---------------------------------------------------------------------------------------------- the user's code


def _user(model: str, where: str, name: str, args: dict[str, Any], folder: Path | None) -> Callable[..., nn.Module]:
    target = _import(model, where, name, folder)
    if not callable(target):
        raise ConfigError(f"model {model!r}: {name} is a {type(target).__name__}, not a class or factory")

    def build(in_channels: int, num_classes: int, image_size: int,
              input_shape: tuple[int, ...] | None = None) -> nn.Module:
        data: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
                                "input_shape": input_shape}
        try:
            return target(**data_arguments(target, data, args), **args)
        except Exception as exc:  # the user's constructor: any error is bad input
            raise ConfigError(f"model {model!r}: {name}(**model_args) raised {type(exc).__name__}: "
                              f"{first_line(exc)}") from None

    return build


def data_arguments(target: Callable[..., Any], data: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """The data's sizes (``in_channels``, ``num_classes``, ``image_size``, ``input_shape``) that ``target`` takes
    by name and ``args`` does not set: what a user's class or factory is called with besides its ``model_args``."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k in params and k not in args}


def _import(model: str, where: str, name: str, folder: Path | None) -> Any:
    try:
        if where.endswith(".py"):
            path = _user_file(where, folder)
            if not path.is_file():
                raise ConfigError(f"model {model!r}: file {path} not found (a path relative to the study file)")
            key = f"kdbench_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
            spec = importlib.util.spec_from_file_location(key, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses and pickling look a class's module up
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module: any error on import is bad input
        raise ConfigError(f"model {model!r}: importing {where} failed: {type(exc).__name__}: "
                          f"{first_line(exc)}") from None
    if not hasattr(module, name):
        raise ConfigError(f"model {model!r}: {where} has no {name!r}")
    return getattr(module, name)
