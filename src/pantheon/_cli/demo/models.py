"""The demo's models (torch): two different teachers and one small student.

* :class:`TeacherMLP` - a wide two-hidden-layer perceptron on the 64 pixels.
* :class:`TeacherCNN` - a small convolutional network on the 8 x 8 image.
* :class:`StudentMLP` - one narrow hidden layer, small enough that the teachers' soft
  targets have something to teach it.

Every model maps ``float32 [B, 64]`` images to ``float32 [B, 10]`` logits. Weights are saved as
plain ``.npz`` archives of numpy arrays and loaded with ``allow_pickle=False`` (no pickle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..._errors import ConfigError, FileFormatError
from .data import NUM_CLASSES, NUM_FEATURES

__all__ = [
    "TEACHER_KINDS",
    "StudentMLP",
    "TeacherCNN",
    "TeacherKind",
    "TeacherMLP",
    "build_teacher",
    "load_weights",
    "save_weights",
]

TeacherKind = Literal["mlp", "cnn"]
TEACHER_KINDS: tuple[TeacherKind, ...] = ("mlp", "cnn")
"""The teacher architectures the demo knows, by name."""


class TeacherMLP(nn.Module):
    """Perceptron 64 -> ``hidden`` -> ``hidden`` -> 10 with ReLU and dropout.

    Args:
        hidden: width of both hidden layers; default 256.
        dropout: dropout probability after each hidden layer (training only); default 0.2.
    """

    def __init__(self, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]`` of images ``[B, 64]``."""
        out: torch.Tensor = self.net(image)
        return out


class TeacherCNN(nn.Module):
    """Two 3x3 convolutions (``channels``, then twice as many), 2x2 max-pool, a linear layer.

    Args:
        channels: channels of the first convolution; default 16.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * channels * 4 * 4, NUM_CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]`` of images ``[B, 64]`` (reshaped to ``[B, 1, 8, 8]`` inside)."""
        x = self.features(image.reshape(-1, 1, 8, 8))
        out: torch.Tensor = self.head(x.flatten(1))
        return out


class StudentMLP(nn.Module):
    """Perceptron 64 -> ``hidden`` -> 10 with ReLU.

    Args:
        hidden: width of the hidden layer; default 16.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        if hidden < 1:
            raise ConfigError(f"StudentMLP: hidden must be >= 1, got {hidden!r}")
        self.net = nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]`` of images ``[B, 64]``."""
        out: torch.Tensor = self.net(image)
        return out


def build_teacher(kind: str) -> nn.Module:
    """A fresh teacher of the given kind (``"mlp"`` or ``"cnn"``) with default sizes.

    Raises:
        ConfigError: an unknown kind.
    """
    if kind == "mlp":
        return TeacherMLP()
    if kind == "cnn":
        return TeacherCNN()
    raise ConfigError(f"unknown teacher kind {kind!r}: expected one of {', '.join(TEACHER_KINDS)}")


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model``'s state dict as an uncompressed ``.npz`` archive of numpy arrays.

    Returns:
        The path written (numpy appends ``.npz`` when missing).
    """
    arrays = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_name(target.name + ".npz")
    np.savez(target, **arrays)
    return target


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load weights saved by :func:`save_weights` into ``model`` (in place) and return it.

    Raises:
        FileFormatError: the file is missing, unreadable, or its arrays do not fit ``model``.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            state = {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    except (OSError, ValueError) as exc:
        raise FileFormatError(
            f"cannot read model weights from {os.fspath(path)!r}: {exc}; "
            "expected an .npz archive written by save_weights()"
        ) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FileFormatError(
            f"the weights in {os.fspath(path)!r} do not fit a {type(model).__name__}: {exc}"
        ) from exc
    return model
