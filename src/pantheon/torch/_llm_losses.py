r"""The losses LLM distillers use, for every kind of teacher knowledge.

Notation, per position (every index of the student's logits but the last, vocabulary, axis):
``p = softmax(s / T)`` is the student's distribution over the ``V`` tokens, ``q`` the teacher's,
``T`` the temperature. The divergences (``divergence=``):

* ``"forward_kl"``: :math:`\mathrm{KL}(q \| p) = \sum_j q_j (\log q_j - \log p_j)`
  (mean-seeking: the usual KD loss);
* ``"reverse_kl"``: :math:`\mathrm{KL}(p \| q) = \sum_j p_j (\log p_j - \log q_j)`
  (mode-seeking, as in MiniLLM);
* ``"jsd"``: the generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024),
  :math:`\beta\,\mathrm{KL}(q \| m) + (1 - \beta)\,\mathrm{KL}(p \| m)` with
  :math:`m = \beta q + (1 - \beta) p` and ``0 < beta < 1`` (``beta=0.5``: the symmetric JSD).

Every loss is multiplied by ``T^2`` (gradient magnitudes independent of ``T``), uses
``0 log 0 = 0``, and is computed in float32 at least. ``mask`` (``[...]``, bool or 0/1, the
student's logits' shape without the vocabulary axis) excludes padding: positions with mask 0
add nothing and get no gradient, and ``reduction="mean"`` (the default) divides by the number
of positions kept. ``reduction`` is one of ``"mean"``, ``"sum"``, ``"batchmean"`` (sum over
the first axis' size) or ``"none"`` (the loss per position).
"""

from __future__ import annotations

import math

import torch

from .._errors import ConfigError
from ._chunked import (
    DenseTeacher,
    HiddenTeacher,
    check_divergence,
    chunked_divergence_rows,
    logsumexp_rows,
)
from ._losses import _reduce

__all__ = ["dense_kd_loss", "hidden_kd_loss", "sampled_kd_loss", "topk_kd_loss"]

_TINY = 1e-30  # below it a mass is 0 for the logarithm (which then is never differentiated)


def _flat(student_logits: torch.Tensor, where: str) -> torch.Tensor:
    if student_logits.ndim < 1 or student_logits.shape[-1] < 1:
        raise ConfigError(
            f"{where}: student logits must be [..., V] with V >= 1, got "
            f"{list(student_logits.shape)}"
        )
    return student_logits.reshape(-1, student_logits.shape[-1])


def _flat_mask(mask: torch.Tensor | None, lead: tuple[int, ...], where: str) -> torch.Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != lead:
        raise ConfigError(
            f"{where}: mask has shape {list(mask.shape)}; expected the student logits' shape "
            f"without the vocabulary axis, {list(lead)}"
        )
    return mask.reshape(-1)


def _finish(
    rows: torch.Tensor,
    lead: tuple[int, ...],
    mask: torch.Tensor | None,
    reduction: str,
) -> torch.Tensor:
    per_pos = rows.reshape(lead)
    if mask is not None:
        keep = mask.to(per_pos.device) != 0
        per_pos = torch.where(keep, per_pos, torch.zeros_like(per_pos))
    return _reduce(per_pos, reduction, mask, int(lead[0]) if lead else 1)


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"temperature must be a number > 0, got {temperature!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    return float(temperature)


def dense_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    position_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> torch.Tensor:
    r"""A divergence between the student and dense teacher logits (module docstring).

    ``q = softmax(t / T)`` with ``t`` the teacher's logits (or log-probabilities: the same
    distribution); entries of ``-inf`` are probability 0. Computed in blocks of
    ``position_chunk`` positions and ``vocab_chunk`` vocabulary entries, with a hand-written
    backward pass: besides the student's logits and their gradient, memory is
    ``O(position_chunk * vocab_chunk)``.

    Args:
        student_logits: ``[..., V]`` (the gradient flows to them).
        teacher_logits: the same shape, any float dtype (a constant: no gradient).
        divergence: ``"forward_kl"`` (default), ``"reverse_kl"`` or ``"jsd"``.
        beta: the generalized JSD's ``beta``, ``0 < beta < 1`` (default 0.5).
        temperature: ``T`` (default 1.0).
        mask: positions that count, ``[...]`` (default: all).
        reduction: ``"mean"`` (default), ``"sum"``, ``"batchmean"`` or ``"none"``.
        position_chunk: positions per block (default 1024).
        vocab_chunk: vocabulary entries per slice (default 8192).
    """
    where = "dense_kd_loss"
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"{where}: student logits {list(student_logits.shape)} and teacher logits "
            f"{list(teacher_logits.shape)} must have the same shape"
        )
    s = _flat(student_logits, where)
    lead = tuple(student_logits.shape[:-1])
    m = _flat_mask(mask, lead, where)
    teacher = DenseTeacher(teacher_logits.to(s.device).reshape(s.shape))
    rows = chunked_divergence_rows(
        s,
        teacher,
        m,
        divergence=divergence,
        beta=beta,
        temperature=_check_temperature(temperature),
        position_chunk=position_chunk,
        vocab_chunk=vocab_chunk,
    )
    return _finish(rows, lead, mask, reduction)


def hidden_kd_loss(
    student_logits: torch.Tensor,
    teacher_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    position_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> torch.Tensor:
    r"""A divergence between the student and the teacher's exact distribution, recomputed from
    its last hidden state: ``q = softmax((h W^T + b) / T)``.

    ``h`` is the teacher's final hidden state per position (after its final norm: what its
    ``lm_head`` reads), ``W`` the ``lm_head`` weight ``[V, d]``, ``b`` its bias (most LLMs have
    none). The teacher's logits are recomputed one vocabulary slice at a time, twice (an online
    logsumexp, then the divergence terms) and again in the backward pass: no ``positions x V``
    teacher tensor is ever built, and the loss equals :func:`dense_kd_loss` on the teacher's
    logits. Memory beyond the student's logits and their gradient:
    ``O(position_chunk * vocab_chunk)``.

    Args:
        student_logits: ``[..., V]`` (the gradient flows to them).
        teacher_hidden: ``[..., d]`` (float16, bfloat16 or float32; a constant).
        lm_head_weight: ``[V, d]`` (e.g. :func:`pantheon.torch.load_lm_head`'s ``weight``).
        lm_head_bias: ``[V]`` or None (default).
        divergence, beta, temperature, mask, reduction, position_chunk, vocab_chunk: as
            :func:`dense_kd_loss`.
    """
    where = "hidden_kd_loss"
    s = _flat(student_logits, where)
    vocab = int(s.shape[1])
    if lm_head_weight.ndim != 2 or int(lm_head_weight.shape[0]) != vocab:
        raise ConfigError(
            f"{where}: lm_head weight must be [V, d] with V = {vocab} (the student's "
            f"vocabulary), got {list(lm_head_weight.shape)}"
        )
    d = int(lm_head_weight.shape[1])
    lead = tuple(student_logits.shape[:-1])
    if tuple(teacher_hidden.shape) != (*lead, d):
        raise ConfigError(
            f"{where}: teacher hidden states must be {[*lead, d]} (the student's positions, "
            f"the lm_head's width), got {list(teacher_hidden.shape)}"
        )
    if lm_head_bias is not None and tuple(lm_head_bias.shape) != (vocab,):
        raise ConfigError(
            f"{where}: lm_head bias must be [{vocab}], got {list(lm_head_bias.shape)}"
        )
    dev = s.device
    teacher = HiddenTeacher(
        teacher_hidden.to(dev).reshape(-1, d),
        lm_head_weight.to(dev),
        None if lm_head_bias is None else lm_head_bias.to(dev),
    )
    rows = chunked_divergence_rows(
        s,
        teacher,
        _flat_mask(mask, lead, where),
        divergence=divergence,
        beta=beta,
        temperature=_check_temperature(temperature),
        position_chunk=position_chunk,
        vocab_chunk=vocab_chunk,
    )
    return _finish(rows, lead, mask, reduction)


def _category_rows(
    log_q: torch.Tensor, log_p: torch.Tensor, divergence: str, beta: float
) -> torch.Tensor:
    """The divergence over the last axis of normalised log-distributions (0 log 0 = 0)."""
    q, p = log_q.exp(), log_p.exp()
    zero = torch.zeros_like(q)
    if divergence == "forward_kl":
        return torch.where(q > 0, q * (log_q - log_p), zero).sum(-1)
    if divergence == "reverse_kl":
        return torch.where(p > 0, p * (log_p - log_q), zero).sum(-1)
    log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log1p(-beta))
    kl_q = torch.where(q > 0, q * (log_q - log_m), zero).sum(-1)
    kl_p = torch.where(p > 0, p * (log_p - log_m), zero).sum(-1)
    return beta * kl_q + (1 - beta) * kl_p


def _indices(idx: torch.Tensor, vocab: int, where: str, what: str) -> torch.Tensor:
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ConfigError(f"{where}: {what} must be integers, got {idx.dtype}")
    if idx.numel():
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= vocab:
            raise ConfigError(
                f"{where}: {what} hold {low if low < 0 else high}, outside the student's "
                f"vocabulary [0, {vocab}); was the knowledge made for another vocabulary?"
            )
    return idx.to(torch.int64)


def topk_kd_loss(
    student_logits: torch.Tensor,
    topk_values: torch.Tensor,
    topk_indices: torch.Tensor,
    tail: torch.Tensor | None = None,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    position_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> torch.Tensor:
    r"""A divergence from top-k teacher knowledge: ``k`` entries ``K`` per position, optionally
    with the teacher's tail mass outside them.

    The student's probabilities ``p_K = softmax(s / T)`` gathered at ``K`` (normalised over the
    full vocabulary) and its remaining mass ``p_r = 1 - sum_K p`` form ``k + 1`` categories:

    * **with** ``tail`` (the teacher's ``log(1 - sum_K q)`` per position, as stored by a top-k
      codec with a tail): the teacher's categories are ``q_K ∝ exp(v / T)`` and
      ``q_r ∝ exp(tail / T)``, normalised together; the divergence is taken over the ``k + 1``
      categories. At ``T = 1`` (log-probabilities stored at the temperature wanted) this is
      exact; at another ``T`` the tail is tempered as if it were one token.
    * **without** ``tail``: the teacher is renormalised over its ``k`` entries,
      ``q_K = softmax(v / T)``, and ``q_r = 0``. Forward KL and JSD keep the student's
      ``p_r`` (forward KL then equals :func:`pantheon.torch.topk_kl`: mass the student puts
      outside ``K`` is penalised through its normalisation); reverse KL, infinite against
      ``q_r = 0``, renormalises the student over ``K`` too: ``p_K = softmax(s_K / T)``.

    Args:
        student_logits: ``[..., V]``.
        topk_values: ``[..., k]`` teacher logits or log-probabilities (any float dtype).
        topk_indices: ``[..., k]`` integer indices into ``V``.
        tail: ``[...]`` (or ``[..., 1]``, as :class:`pantheon.SparseTopK` holds it) the
            teacher's log tail mass, or None (default).
        divergence, beta, temperature, mask, reduction: as :func:`dense_kd_loss`.
        position_chunk, vocab_chunk: blocks for the student's logsumexp (default 1024, 8192).
    """
    where = "topk_kd_loss"
    lead = tuple(student_logits.shape[:-1])
    if topk_values.shape != topk_indices.shape or tuple(topk_values.shape[:-1]) != lead:
        raise ConfigError(
            f"{where}: expected top-k values and indices [..., k] matching the student logits "
            f"{list(student_logits.shape)} except the last axis; got values "
            f"{list(topk_values.shape)}, indices {list(topk_indices.shape)}"
        )
    if tail is not None and tuple(tail.shape) == (*lead, 1):
        tail = tail.reshape(lead)  # the codec's [..., 1] form
    if tail is not None and tuple(tail.shape) != lead:
        raise ConfigError(
            f"{where}: tail must be {list(lead)} or {[*lead, 1]} (one log mass per position), got "
            f"{list(tail.shape)}"
        )
    check_divergence(divergence, beta)
    temp = _check_temperature(temperature)
    s = _flat(student_logits, where)
    m = _flat_mask(mask, lead, where)
    k = int(topk_values.shape[-1])
    idx = _indices(topk_indices.to(s.device).reshape(-1, k), int(s.shape[1]), where, "indices")
    s_k = s.gather(1, idx).float() / temp
    v = topk_values.to(s.device).reshape(-1, k).float() / temp
    t_tail = None if tail is None else tail.to(s.device).reshape(-1, 1).float() / temp
    if m is not None:  # padding may hold anything: keep it out of the gradient
        keep = m.to(s.device)[:, None] != 0
        v = torch.where(keep, v, torch.zeros_like(v))
        if t_tail is not None:
            t_tail = torch.where(keep, t_tail, torch.zeros_like(t_tail))
    if tail is None and divergence == "reverse_kl":
        rows = _category_rows(
            torch.log_softmax(v, -1), torch.log_softmax(s_k, -1), divergence, beta
        )
        return _finish(rows * temp**2, lead, mask, reduction)
    log_p_k = s_k - logsumexp_rows(s, temp, position_chunk, vocab_chunk)[:, None]
    if tail is None and divergence == "forward_kl":
        rows = _category_rows(torch.log_softmax(v, -1), log_p_k, divergence, beta)
        return _finish(rows * temp**2, lead, mask, reduction)
    p_rest = -torch.expm1(torch.logsumexp(log_p_k, -1))  # 1 - sum_K p, <= 0 from rounding
    log_p_rest = torch.where(
        p_rest > 0, p_rest.clamp_min(_TINY).log(), torch.full_like(p_rest, -math.inf)
    )
    log_p = torch.cat([log_p_k, log_p_rest[:, None]], -1)
    if t_tail is None:
        rest = torch.full((v.shape[0], 1), -math.inf, device=v.device)
        log_q = torch.cat([torch.log_softmax(v, -1), rest], -1)
    else:
        log_q = torch.log_softmax(torch.cat([v, t_tail], -1), -1)
    rows = _category_rows(log_q, log_p, divergence, beta)
    return _finish(rows * temp**2, lead, mask, reduction)


def sampled_kd_loss(
    student_logits: torch.Tensor,
    sample_ids: torch.Tensor,
    sample_counts: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    position_chunk: int = 1024,
    vocab_chunk: int = 8192,
) -> torch.Tensor:
    r"""Forward KL from sampled teacher knowledge: the sparse KD estimator of Anshumann et al.
    (ACL 2025, "Sparse Logit Sampling").

    Per position the teacher stored tokens ``j`` drawn ``n`` times from its distribution ``q``
    (at temperature ``T``) with their counts ``c_j`` (``sum c = n``). The sparse target
    ``q̂_j = c_j / n`` is unbiased, ``E[q̂] = q``, and so is the loss's gradient:

    .. math:: \ell = T^2 \sum_j \hat q_j (\log \hat q_j - \log p_j),\qquad
              \frac{\partial \ell}{\partial s} = T\,(p - \hat q),\quad
              E\Big[\frac{\partial \ell}{\partial s}\Big] = T\,(p - q)

    the gradient of ``T^2 KL(q || p)``; the value differs from that KL only by a term the
    student does not change (``H(q) - H(q̂)`` in expectation). Entries with a count of 0 are
    padding. Each id should appear once per position (a repeated id adds its counts to the
    cross-entropy correctly; only the constant entropy term is then off). Only the forward KL
    is unbiased from samples, so this loss has no ``divergence``.

    Args:
        student_logits: ``[..., V]``.
        sample_ids: ``[..., n]`` integer token ids in ``[0, V)``.
        sample_counts: ``[..., n]`` non-negative counts (any number type), a positive sum per
            position that counts.
        temperature: ``T``, the one the samples were drawn at (default 1.0).
        mask, reduction: as :func:`dense_kd_loss`.
        position_chunk, vocab_chunk: blocks for the student's logsumexp (default 1024, 8192).
    """
    where = "sampled_kd_loss"
    lead = tuple(student_logits.shape[:-1])
    if sample_ids.shape != sample_counts.shape or tuple(sample_ids.shape[:-1]) != lead:
        raise ConfigError(
            f"{where}: expected sample ids and counts [..., n] matching the student logits "
            f"{list(student_logits.shape)} except the last axis; got ids "
            f"{list(sample_ids.shape)}, counts {list(sample_counts.shape)}"
        )
    temp = _check_temperature(temperature)
    s = _flat(student_logits, where)
    m = _flat_mask(mask, lead, where)
    n = int(sample_ids.shape[-1])
    idx = _indices(sample_ids.to(s.device).reshape(-1, n), int(s.shape[1]), where, "sample ids")
    counts = sample_counts.to(s.device).reshape(-1, n).float()
    if counts.numel() and float(counts.min()) < 0:
        raise ConfigError(f"{where}: sample counts must be >= 0, got {float(counts.min())}")
    total = counts.sum(-1, keepdim=True)
    short = total[:, 0] <= 0
    if m is not None:
        short &= m.to(s.device) != 0
    if bool(short.any()):
        raise ConfigError(
            f"{where}: a position that counts has no samples (counts summing to 0); mask it "
            "out (mask=) or check the knowledge"
        )
    q_hat = counts / total.clamp_min(1)
    log_p = (
        s.gather(1, idx).float() / temp
        - logsumexp_rows(s, temp, position_chunk, vocab_chunk)[:, None]
    )
    log_q = torch.where(q_hat > 0, q_hat.clamp_min(_TINY).log(), torch.zeros_like(q_hat))
    rows = torch.where(q_hat > 0, q_hat * (log_q - log_p), torch.zeros_like(q_hat)).sum(-1)
    return _finish(rows * temp**2, lead, mask, reduction)
