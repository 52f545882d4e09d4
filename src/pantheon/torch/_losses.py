"""Knowledge-distillation losses for PyTorch, each with its formula in the docstring."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._errors import ConfigError

__all__ = ["feature_mse", "soft_target_kl", "topk_kl"]


_REDUCTIONS = ("batchmean", "mean", "sum", "none")


def _reduce(
    per_row: torch.Tensor, reduction: str, mask: torch.Tensor | None, n: int
) -> torch.Tensor:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    if mask is not None:
        m = mask.to(device=per_row.device, dtype=per_row.dtype)
        if m.shape != per_row.shape:
            raise ConfigError(
                f"mask has shape {list(mask.shape)}; expected the logits' shape without the "
                f"last (vocabulary) axis, {list(per_row.shape)}"
            )
        per_row = per_row * m
        count = m.sum()
    else:
        count = torch.tensor(float(per_row.numel()), device=per_row.device)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.sum() / count.clamp_min(1)
    return per_row.sum() / max(n, 1)


def _kl_rows(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``sum_j q_j (log q_j - log p_j)`` over the last axis, with ``0 log 0 = 0``."""
    q = log_q.exp()
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    return terms.sum(-1)


def _float(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Hinton's soft-target loss: ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    For each position (every index but the last axis, the classes or vocabulary):

    .. math:: \ell = T^2 \sum_j q_j (\log q_j - \log p_j),\quad
              q = \mathrm{softmax}(t / T),\ p = \mathrm{softmax}(s / T)

    with ``0 log 0 = 0`` (teacher logits of ``-inf``, e.g. densified top-k, are allowed). The
    ``T^2`` factor keeps gradient magnitudes independent of the temperature. Computed in at
    least float32.

    Args:
        student_logits: ``[n, ..., V]``.
        teacher_logits: the same shape (any float dtype; moved to the student's device).
        temperature: ``T`` (default 1.0).
        reduction: ``"batchmean"`` (sum / n, the default, as ``torch.nn.KLDivLoss``),
            ``"mean"`` (mean over positions, or over the positions ``mask`` keeps), ``"sum"``,
            ``"none"`` (per position, shape ``[n, ...]``).
        mask: optional ``[n, ...]`` (bool or 0/1) of the positions that count.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"soft_target_kl: student logits {list(student_logits.shape)} and teacher logits "
            f"{list(teacher_logits.shape)} must have the same shape"
        )
    s = _float(student_logits, student_logits)
    t = _float(teacher_logits, s)
    log_p = torch.log_softmax(s / temperature, dim=-1)
    log_q = torch.log_softmax(t / temperature, dim=-1)
    rows = _kl_rows(log_q, log_p) * (temperature * temperature)
    return _reduce(rows, reduction, mask, int(student_logits.shape[0]))


def topk_kl(
    student_logits: torch.Tensor,
    topk_values: torch.Tensor,
    topk_indices: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""KL distillation from sparse top-k teacher knowledge (values and their vocabulary indices).

    The teacher's distribution is renormalised over its ``k`` entries:
    ``q_j = exp(v_j / T) / sum_i exp(v_i / T)`` for the entries ``j`` in ``K = topk_indices``
    and 0 elsewhere (the same whether ``v`` are logits or log-probabilities, which differ by a
    constant per position; entries of ``-inf`` get ``q = 0``). The student's log-probabilities
    are normalised over the full vocabulary, ``log p = log_softmax(s / T)``, and gathered at
    ``K``. Per position:

    .. math:: \ell = T^2 \sum_{j \in K} q_j (\log q_j - \log p_j)

    which is exactly ``T^2 KL(q || p)`` since ``q`` is 0 outside ``K`` (so the student's mass
    outside the teacher's top-k is penalised through the normalisation of ``p``).

    Args:
        student_logits: ``[n, ..., V]``.
        topk_values: ``[n, ..., k]`` teacher logits or log-probabilities.
        topk_indices: ``[n, ..., k]`` integer indices into ``V``.
        temperature: ``T`` (default 1.0).
        reduction: as :func:`soft_target_kl`.
        mask: as :func:`soft_target_kl`.
    """
    if topk_values.shape != topk_indices.shape or (
        topk_values.shape[:-1] != student_logits.shape[:-1]
    ):
        raise ConfigError(
            f"topk_kl: expected topk_values and topk_indices of shape [..., k] matching the "
            f"student logits [..., V] = {list(student_logits.shape)} except the last axis; got "
            f"values {list(topk_values.shape)}, indices {list(topk_indices.shape)}"
        )
    s = _float(student_logits, student_logits)
    v = _float(topk_values, s)
    idx = topk_indices.to(device=s.device, dtype=torch.int64)
    log_p = torch.log_softmax(s / temperature, dim=-1).gather(-1, idx)
    log_q = torch.log_softmax(v / temperature, dim=-1)
    rows = _kl_rows(log_q, log_p) * (temperature * temperature)
    return _reduce(rows, reduction, mask, int(student_logits.shape[0]))


def feature_mse(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Feature distillation: ``mean((proj(s) - t)^2)`` over every element.

    Args:
        student_features: ``[n, ..., d_s]``.
        teacher_features: ``[n, ..., d_t]`` (moved to the student's device and dtype).
        projection: optional map of student features to the teacher's width (e.g. a trainable
            ``torch.nn.Linear(d_s, d_t)``); default none (the widths must match).
        reduction: ``"mean"`` (default), ``"sum"``, or ``"none"`` (elementwise).
    """
    s = projection(student_features) if projection is not None else student_features
    if s.shape != teacher_features.shape:
        raise ConfigError(
            f"feature_mse: (projected) student features {list(s.shape)} and teacher features "
            f"{list(teacher_features.shape)} must have the same shape; pass projection= to map "
            "the student's width to the teacher's"
        )
    sq = (s - teacher_features.to(device=s.device, dtype=s.dtype)) ** 2
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    if reduction == "none":
        return sq
    raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
