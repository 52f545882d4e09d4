"""Divergences between a student's and a teacher's full-vocabulary distributions, computed in
blocks of positions and vocabulary slices (memory ``O(position_chunk * vocab_chunk)`` beyond the
student's logits and their gradient).

The teacher's logits come from a :class:`_Teacher` source: stored dense logits, or the
teacher's last hidden state times its ``lm_head`` weight (recomputed slice by slice, never
materialised for the whole vocabulary). One ``torch.autograd.Function`` computes the
per-position loss in two passes (an online logsumexp of both distributions over the vocabulary
slices, then the divergence terms) and recomputes the slices in its backward pass instead of
keeping them, so nothing of size ``positions x V`` is saved for the gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._errors import ConfigError

__all__ = [
    "DIVERGENCES",
    "DenseTeacher",
    "HiddenTeacher",
    "check_divergence",
    "chunked_divergence_rows",
    "logsumexp_rows",
]

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")

Rows = tuple[int, int] | torch.Tensor
"""A block of positions: a span ``(start, stop)`` (read as views) or their indices."""


def _take(x: torch.Tensor, rows: Rows, c0: int, c1: int) -> torch.Tensor:
    """``x[rows, c0:c1]``: a view for a span, a copy of the block for indices."""
    if isinstance(rows, tuple):
        return x[rows[0] : rows[1], c0:c1]
    return x[:, c0:c1].index_select(0, rows)


def _blocks(n: int, kept: torch.Tensor | None, size: int) -> list[Rows]:
    if kept is None:
        return [(r, min(r + size, n)) for r in range(0, n, size)]
    return [kept[r : r + size] for r in range(0, len(kept), size)]


def _count(rows: Rows) -> int:
    return rows[1] - rows[0] if isinstance(rows, tuple) else len(rows)


class DenseTeacher:
    """Teacher logits stored dense, ``[N, V]`` (any float dtype; read block by block)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits.detach()
        self.vocab = int(logits.shape[-1])

    def block(self, rows: Rows, c0: int, c1: int) -> torch.Tensor:
        """float32 teacher logits of positions ``rows``, vocabulary entries ``c0:c1``."""
        return _take(self.logits, rows, c0, c1).float()


class HiddenTeacher:
    """Teacher logits ``hidden @ weight.T + bias`` recomputed per vocabulary slice.

    ``hidden`` is ``[N, d]``, ``weight`` ``[V, d]`` (the teacher's ``lm_head``), ``bias``
    ``[V]`` or None; all are constants (no gradient flows to them).
    """

    def __init__(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        self.hidden = hidden.detach()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.vocab = int(weight.shape[0])

    def block(self, rows: Rows, c0: int, c1: int) -> torch.Tensor:
        """float32 teacher logits of positions ``rows``, vocabulary entries ``c0:c1``."""
        h = _take(self.hidden, rows, 0, int(self.hidden.shape[1])).float()
        out = h @ self.weight[c0:c1].float().T
        if self.bias is not None:
            out = out + self.bias[c0:c1].float()
        return out


_Teacher = DenseTeacher | HiddenTeacher


def _slices(vocab: int, chunk: int) -> list[tuple[int, int]]:
    return [(c, min(c + chunk, vocab)) for c in range(0, vocab, chunk)]


def _xlogy_ratio(a: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``a * (log a - log b)`` with ``0 log 0 = 0`` (and ``+inf`` where ``a > 0 = b``)."""
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a))


class _Block:
    """The state of one block of positions: student and teacher logsumexps and, after the
    forward pass, the per-position divergence pieces the gradient needs."""

    def __init__(
        self,
        s: torch.Tensor,
        teacher: _Teacher,
        rows: Rows,
        opts: _Opts,
        lse: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.s, self.teacher, self.rows, self.o = s, teacher, rows, opts
        if lse is not None:  # the backward pass: known from the forward pass
            self.lse_s, self.lse_t = lse
            return
        self.lse_s = torch.full((_count(rows),), -math.inf, device=s.device)
        self.lse_t = torch.full_like(self.lse_s, -math.inf)
        for c0, c1 in _slices(teacher.vocab, opts.vocab_chunk):
            self.lse_s = torch.logaddexp(self.lse_s, torch.logsumexp(self._s(c0, c1), -1))
            self.lse_t = torch.logaddexp(self.lse_t, torch.logsumexp(self._t(c0, c1), -1))

    def _s(self, c0: int, c1: int) -> torch.Tensor:
        x = _take(self.s, self.rows, c0, c1).float()
        return x if self.o.temperature == 1 else x / self.o.temperature

    def _t(self, c0: int, c1: int) -> torch.Tensor:
        x = self.teacher.block(self.rows, c0, c1)
        return x if self.o.temperature == 1 else x / self.o.temperature

    def logs(self, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher log-probabilities on the slice ``c0:c1``."""
        return self._s(c0, c1) - self.lse_s[:, None], self._t(c0, c1) - self.lse_t[:, None]

    def log_mix(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        beta = self.o.beta
        return torch.logaddexp(log_q + math.log(beta), log_p + math.log1p(-beta))

    def terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the divergence per position, the piece its gradient needs), unscaled by ``T^2``."""
        div = self.o.divergence
        first = torch.zeros_like(self.lse_s)
        second = torch.zeros_like(self.lse_s)
        for c0, c1 in _slices(self.teacher.vocab, self.o.vocab_chunk):
            if div == "forward_kl":  # sum q (t - s) / T, then + lse_s - lse_t (sum q = 1)
                t = self._t(c0, c1)
                q = torch.exp(t - self.lse_t[:, None])
                first += torch.where(q > 0, q * (t - self._s(c0, c1)), 0.0).sum(-1)
                continue
            log_p, log_q = self.logs(c0, c1)
            if div == "reverse_kl":
                first += _xlogy_ratio(log_p.exp(), log_p, log_q).sum(-1)
            else:
                log_m = self.log_mix(log_p, log_q)
                first += _xlogy_ratio(log_q.exp(), log_q, log_m).sum(-1)  # KL(q || m)
                second += _xlogy_ratio(log_p.exp(), log_p, log_m).sum(-1)  # KL(p || m)
        if div == "jsd":
            beta = self.o.beta
            return beta * first + (1 - beta) * second, second
        if div == "forward_kl":
            first += self.lse_s - self.lse_t
        return first, first

    def grad(self, c0: int, c1: int, piece: torch.Tensor) -> torch.Tensor:
        """d(divergence) / d(student logits) on the slice ``c0:c1`` (before ``T^2``)."""
        div = self.o.divergence
        if div == "forward_kl":
            p = torch.exp(self._s(c0, c1) - self.lse_s[:, None])
            p -= torch.exp(self._t(c0, c1) - self.lse_t[:, None])
            return p if self.o.temperature == 1 else p / self.o.temperature
        log_p, log_q = self.logs(c0, c1)
        p = log_p.exp()
        if div == "reverse_kl":  # dL/dp = log p - log q + 1; through softmax p (g - <p, g>)
            g = log_p - log_q - piece[:, None]
        else:  # dL/dp = (1 - beta) log(p / m)
            g = (1 - self.o.beta) * (log_p - self.log_mix(log_p, log_q) - piece[:, None])
        return torch.where(p > 0, p * g, torch.zeros_like(p)) / self.o.temperature


class _Opts:
    __slots__ = ("beta", "divergence", "position_chunk", "temperature", "vocab_chunk")

    def __init__(
        self,
        divergence: str,
        beta: float,
        temperature: float,
        position_chunk: int,
        vocab_chunk: int,
    ) -> None:
        self.divergence = divergence
        self.beta = beta
        self.temperature = temperature
        self.position_chunk = position_chunk
        self.vocab_chunk = vocab_chunk


def _put(out: torch.Tensor, rows: Rows, value: torch.Tensor) -> None:
    if isinstance(rows, tuple):
        out[rows[0] : rows[1]] = value
    else:
        out[rows] = value


def _get(vec: torch.Tensor, rows: Rows) -> torch.Tensor:
    return vec[rows[0] : rows[1]] if isinstance(rows, tuple) else vec.index_select(0, rows)


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, s: torch.Tensor, teacher: _Teacher, kept: torch.Tensor | None, opts: _Opts
    ) -> torch.Tensor:
        out = torch.zeros(s.shape[0], device=s.device, dtype=torch.float32)
        pieces = torch.zeros_like(out)
        lse_s = torch.zeros_like(out)
        lse_t = torch.zeros_like(out)
        scale = opts.temperature**2
        with torch.no_grad():
            for rows in _blocks(int(s.shape[0]), kept, opts.position_chunk):
                block = _Block(s, teacher, rows, opts)
                value, piece = block.terms()
                _put(out, rows, value * scale)
                _put(pieces, rows, piece)
                _put(lse_s, rows, block.lse_s)
                _put(lse_t, rows, block.lse_t)
        ctx.save_for_backward(s, pieces, lse_s, lse_t)
        ctx.kept = kept
        ctx.teacher = teacher
        ctx.opts = opts
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        s, pieces, lse_s, lse_t = ctx.saved_tensors
        teacher: _Teacher = ctx.teacher
        opts: _Opts = ctx.opts
        grad = torch.zeros_like(s)
        scale = opts.temperature**2
        with torch.no_grad():
            for rows in _blocks(int(s.shape[0]), ctx.kept, opts.position_chunk):
                block = _Block(s, teacher, rows, opts, (_get(lse_s, rows), _get(lse_t, rows)))
                g_rows = (_get(grad_out, rows).float() * scale)[:, None]
                piece = _get(pieces, rows)
                for c0, c1 in _slices(teacher.vocab, opts.vocab_chunk):
                    part = (block.grad(c0, c1, piece) * g_rows).to(grad.dtype)
                    if isinstance(rows, tuple):
                        grad[rows[0] : rows[1], c0:c1] = part
                    else:
                        grad[rows, c0:c1] = part
        return grad, None, None, None


def check_divergence(divergence: str, beta: float) -> None:
    """Raise :class:`~pantheon.ConfigError` for an unknown divergence or a ``beta`` outside
    ``(0, 1)`` for the generalized JSD."""
    if divergence not in DIVERGENCES:
        raise ConfigError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
    if divergence == "jsd" and not (isinstance(beta, (int, float)) and 0 < beta < 1):
        raise ConfigError(
            f"the generalized JSD needs 0 < beta < 1, got {beta!r}; its limits are "
            "divergence='forward_kl' (beta -> 0, scaled) and 'reverse_kl' (beta -> 1)"
        )


def _check_chunk(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def chunked_divergence_rows(
    student_logits: torch.Tensor,
    teacher: _Teacher,
    mask: torch.Tensor | None,
    *,
    divergence: str,
    beta: float,
    temperature: float,
    position_chunk: int,
    vocab_chunk: int,
) -> torch.Tensor:
    """The divergence per position, ``[N]`` (0 where ``mask`` is 0), differentiable with
    respect to ``student_logits`` ``[N, V]``; ``mask`` ``[N]`` or None."""
    check_divergence(divergence, beta)
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    opts = _Opts(
        divergence,
        float(beta),
        float(temperature),
        _check_chunk("position_chunk", position_chunk),
        _check_chunk("vocab_chunk", vocab_chunk),
    )
    n = student_logits.shape[0]
    kept = None  # every position, read in spans
    if mask is not None:
        kept = torch.nonzero(mask.to(student_logits.device).reshape(n) != 0).reshape(-1)
    rows: torch.Tensor = _ChunkedDivergence.apply(  # type: ignore[no-untyped-call]
        student_logits, teacher, kept, opts
    )
    return rows


class _LogSumExp(torch.autograd.Function):
    """``logsumexp(s / T)`` per row of ``[N, V]`` in blocks; the backward pass recomputes
    ``softmax(s / T) / T`` block by block instead of keeping it."""

    @staticmethod
    def forward(
        ctx: Any, s: torch.Tensor, temperature: float, position_chunk: int, vocab_chunk: int
    ) -> torch.Tensor:
        out = torch.empty(s.shape[0], device=s.device, dtype=torch.float32)
        with torch.no_grad():
            for r0 in range(0, s.shape[0], position_chunk):
                r1 = min(r0 + position_chunk, s.shape[0])
                acc = torch.full((r1 - r0,), -math.inf, device=s.device)
                for c0, c1 in _slices(int(s.shape[1]), vocab_chunk):
                    part = s[r0:r1, c0:c1].float() / temperature
                    acc = torch.logaddexp(acc, torch.logsumexp(part, -1))
                out[r0:r1] = acc
        ctx.save_for_backward(s, out)
        ctx.sizes = (temperature, position_chunk, vocab_chunk)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        s, out = ctx.saved_tensors
        temperature, position_chunk, vocab_chunk = ctx.sizes
        grad = torch.empty_like(s)
        with torch.no_grad():
            for r0 in range(0, s.shape[0], position_chunk):
                r1 = min(r0 + position_chunk, s.shape[0])
                g = (grad_out[r0:r1].float() / temperature)[:, None]
                lse = out[r0:r1, None]
                for c0, c1 in _slices(int(s.shape[1]), vocab_chunk):
                    p = torch.exp(s[r0:r1, c0:c1].float() / temperature - lse)
                    grad[r0:r1, c0:c1] = (p * g).to(grad.dtype)
        return grad, None, None, None


def logsumexp_rows(
    s: torch.Tensor, temperature: float, position_chunk: int, vocab_chunk: int
) -> torch.Tensor:
    """``logsumexp(s / T, -1)`` of ``[N, V]`` as float32 ``[N]``, differentiable, in blocks of
    ``position_chunk x vocab_chunk`` (nothing of size ``N x V`` kept for the gradient)."""
    rows: torch.Tensor = _LogSumExp.apply(  # type: ignore[no-untyped-call]
        s,
        float(temperature),
        _check_chunk("position_chunk", position_chunk),
        _check_chunk("vocab_chunk", vocab_chunk),
    )
    return rows
