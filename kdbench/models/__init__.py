"""The networks kdbench trains and distils between, and how checkpoints are loaded into them.

Every model is a :class:`ModelSpec` record of the zoo (:func:`list_models` names them, :data:`MODELS` maps
names to records), built by :func:`build_model` for a dataset's ``in_channels``, ``num_classes`` and
``image_size``; it returns raw logits of shape ``(batch, num_classes)``. The zoo's families (the records
in :mod:`~kdbench.models.zoo` are the full list, each with its summary and source):

* ``cnn-s`` / ``cnn-m``: a tiny student CNN (~15k parameters) and a teacher-sized CNN (~0.7M) that
  train in minutes on a laptop CPU (MNIST family, CIFAR).
* ``mlp-800`` / ``mlp-1200``: the two-hidden-layer MLPs of Hinton, Vinyals & Dean (2015): the
  unregularised 800-unit student and the dropout-regularised 1200-unit teacher.
* ``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``, ``wrn-16-2``, ``wrn-40-2``: the CIFAR
  networks of RepDistiller (Tian, Krishnan & Isola, "Contrastive Representation Distillation", 2020),
  with the same widths, depths and initialisation, so parameter counts match its tables.
* ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's ImageNet ResNets, with the usual CIFAR
  stem (3x3 stride-1 conv, no max-pool) for images of at most 64 pixels.

All of them end in global pooling (or, for the MLPs, a flatten of the whole image), so any image size
from 16 pixels up works. Weights come only from local files (:func:`load_state_dict_file`); nothing is
downloaded.

The package has three modules: :mod:`~kdbench.models.zoo` (the registry, one record per model, and
:func:`build_model`, which also builds a record made elsewhere), :mod:`~kdbench.models.architectures`
(the networks) and :mod:`~kdbench.models.checkpoints` (loading weights files). Importing it does not
import torchvision: only building a torchvision ResNet does.
"""

from __future__ import annotations

from kdbench.models.architectures import CifarResNet, WideResNet
from kdbench.models.checkpoints import load_state_dict_file
from kdbench.models.zoo import MODELS, ModelSpec, build_model, count_parameters, get_model_spec, list_models

__all__ = [
    "MODELS",
    "CifarResNet",
    "ModelSpec",
    "WideResNet",
    "build_model",
    "count_parameters",
    "get_model_spec",
    "list_models",
    "load_state_dict_file",
]
