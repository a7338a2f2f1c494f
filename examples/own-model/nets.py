"""Your own teacher and student: plain ``nn.Module`` classes, named in study.yaml as ``nets.py:Teacher`` and
``nets.py:Student`` (a path relative to the study file). kdbench passes each constructor the arguments it
accepts of ``in_channels``, ``num_classes`` and ``image_size`` (from the data), plus the study's ``model_args``;
``forward`` takes a float batch ``[N, C, H, W]`` (normalised per channel) and returns ``[N, num_classes]`` logits.
"""

from __future__ import annotations

import torch
from torch import nn


class Teacher(nn.Module):
    """A small CNN: two 3x3 convolution + max-pool blocks, then a two-layer classifier."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Student(nn.Module):
    """A one-hidden-layer MLP over the flattened image."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
