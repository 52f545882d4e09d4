"""Training and evaluation for the demo: teachers on hard labels, the student with or without KD.

The student's training loop takes any iterable of knowledge batches (``dict`` of numpy arrays
with ``"image"`` and ``"label"``, and ``"logits"`` when distilling), so the same code trains on
batches that come from Pantheon's ``Student.get_knowledge_generator()`` and on batches made in
this process. The distillation loss is Hinton et al.'s::

    loss = alpha * CE(student, label)
           + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

where ``teacher`` is the (merged) teacher logits and ``T`` the temperature.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..._errors import ConfigError, KnowledgeError
from .models import StudentMLP

__all__ = [
    "EpochStats",
    "StudentConfig",
    "StudentTrainer",
    "distillation_loss",
    "evaluate",
    "predict_logits",
    "train_teacher",
    "writable_array",
]


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512) -> float:
    """Accuracy (fraction in ``[0, 1]``) of ``model`` on images ``x`` with labels ``y``."""
    logits = predict_logits(model, x, batch_size=batch_size)
    return float(np.mean(np.argmax(logits, axis=1) == y))


def predict_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits ``float32 [n, 10]`` of ``model`` on images ``x`` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    parts: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(writable_array(x[start : start + batch_size], np.float32))
            parts.append(model(batch).numpy().astype(np.float32, copy=False))
    model.train(was_training)
    if not parts:
        return np.zeros((0, 10), dtype=np.float32)
    return np.concatenate(parts)


def train_teacher(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    desc: str = "teacher",
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` (in place) on hard labels with Adam and shuffled mini-batches.

    Args:
        model: a fresh model mapping ``[B, 64]`` images to ``[B, 10]`` logits.
        x: training images ``float32 [n, 64]``; y: labels ``int64 [n]``.
        epochs: passes over the data (>= 1).
        seed: seeds the shuffling; the model's initial weights are whatever it was built with.
        batch_size: samples per step; default 64. lr: Adam's learning rate; default 1e-3.
        desc: label of the progress bar. progress: show a tqdm bar (on stderr); default True.

    Returns:
        ``model``, trained and left in eval mode.
    """
    if epochs < 1:
        raise ConfigError(f"train_teacher: epochs must be >= 1, got {epochs!r}")
    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(len(xs), generator=gen)
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
    model.eval()
    return model


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hard-label cross-entropy, blended with soft-target KL divergence when teacher logits come.

    Args:
        student_logits: ``[B, C]``; labels: ``int64 [B]``.
        teacher_logits: ``[B, C]`` or None (then the loss is the plain cross-entropy).
        temperature: softening temperature ``T`` (> 0) of both distributions.
        alpha: weight of the hard-label term in ``[0, 1]``; the soft term gets ``1 - alpha`` and
            is scaled by ``T**2`` so its gradients keep their size as ``T`` changes.
    """
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None:
        return hard
    soft_targets = F.softmax(teacher_logits / temperature, dim=1)
    log_probs = F.log_softmax(student_logits / temperature, dim=1)
    soft = F.kl_div(log_probs, soft_targets, reduction="batchmean") * temperature**2
    return alpha * hard + (1.0 - alpha) * soft


@dataclass(frozen=True)
class StudentConfig:
    """How the student is built and trained.

    Attributes:
        hidden: width of the student's hidden layer; default 16.
        lr: Adam's learning rate; default 0.01.
        temperature: distillation temperature ``T``; default 4.0.
        alpha: weight of the hard-label loss when distilling (soft loss gets ``1 - alpha``);
            default 0.3.
    """

    hidden: int = 16
    lr: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.3

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"StudentConfig: temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"StudentConfig: alpha must be in [0, 1], got {self.alpha!r}")
        if self.lr <= 0:
            raise ConfigError(f"StudentConfig: lr must be > 0, got {self.lr!r}")


@dataclass(frozen=True)
class EpochStats:
    """What one epoch of student training saw.

    Attributes:
        batches: batches consumed. samples: samples consumed.
        mean_loss: mean training loss over the batches.
        seconds: wall time of the epoch's loop, waiting for batches included (s).
    """

    batches: int
    samples: int
    mean_loss: float
    seconds: float


def writable_array(value: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """``value`` as a C-contiguous, writable array of ``dtype`` (copied only when needed).

    Knowledge batches may be read-only views of received buffers; torch wants writable memory.
    """
    return np.require(value, dtype=dtype, requirements=["C", "W"])


class StudentTrainer:
    """A :class:`StudentMLP` and its optimizer, trained one epoch (one batch stream) at a time.

    Two trainers built with the same ``seed`` and config start from identical weights, so a
    run on hard labels and a run with soft targets differ only by the knowledge they get.

    Args:
        seed: seeds the student's initial weights.
        config: sizes and loss settings; default :class:`StudentConfig`'s defaults.
        distill: use the batches' ``"logits"`` as soft targets (True) or ignore them (False).
    """

    def __init__(self, seed: int, config: StudentConfig | None = None, *, distill: bool) -> None:
        self.config = config or StudentConfig()
        self.distill = distill
        torch.manual_seed(seed)
        self.model = StudentMLP(self.config.hidden)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)

    def train_step(self, batch: Mapping[str, np.ndarray], *, index: int = 0) -> float:
        """One optimizer step on one batch; returns the batch's loss.

        The batch needs ``"image"`` (``[B, 64]``) and ``"label"`` (``[B]`` or ``[B, 1]``);
        a distilling trainer also needs ``"logits"`` (``[B, 10]``). ``index`` only numbers the
        batch in error messages.

        Raises:
            KnowledgeError: a batch without a key this trainer needs.
        """
        cfg = self.config
        self.model.train()
        image, label, teacher = self._tensors(batch, index)
        loss = distillation_loss(
            self.model(image), label, teacher, temperature=cfg.temperature, alpha=cfg.alpha
        )
        self.optimizer.zero_grad()
        torch.autograd.backward(loss)
        self.optimizer.step()
        return float(loss.detach())

    def train_epoch(self, batches: Iterable[Mapping[str, np.ndarray]]) -> EpochStats:
        """Train on every batch of ``batches`` once, in order (see :meth:`train_step`)."""
        n_batches = n_samples = 0
        total_loss = 0.0
        start = time.perf_counter()
        for batch in batches:
            total_loss += self.train_step(batch, index=n_batches)
            n_batches += 1
            n_samples += len(batch["image"])
        seconds = time.perf_counter() - start
        self.model.eval()
        mean = total_loss / n_batches if n_batches else float("nan")
        return EpochStats(batches=n_batches, samples=n_samples, mean_loss=mean, seconds=seconds)

    def _tensors(
        self, batch: Mapping[str, np.ndarray], index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        needed = ("image", "label", "logits") if self.distill else ("image", "label")
        missing = [key for key in needed if key not in batch]
        if missing:
            raise KnowledgeError(
                f"student batch {index} lacks {missing}: expected keys {list(needed)}, "
                f"got {sorted(batch)}; have a teacher pass the inputs through "
                '(schema {"image": "image", "label": "label"}) and serve "logits"'
            )
        image = torch.from_numpy(writable_array(batch["image"], np.float32))
        label = torch.from_numpy(writable_array(batch["label"], np.int64).reshape(-1))
        teacher = None
        if self.distill:
            teacher = torch.from_numpy(writable_array(batch["logits"], np.float32))
        return image, label, teacher

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Test accuracy (fraction in ``[0, 1]``) of the student now."""
        return evaluate(self.model, x, y)
