"""Sparse forms of knowledge that codecs hand to the student: :class:`SparseTopK`.

A sparse form holds per-position arrays (numpy arrays ``[n, ..., m]`` or
:class:`~pantheon.Ragged` fields ``[n, -1, m]``, one row per token) and supports what the
student needs to re-batch it: ``len``, ``slice``, ``take`` and ``concat``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._chunks import take_value
from .._errors import KnowledgeError
from .._knowledge import Ragged, Value, concat_values, slice_value

__all__ = ["HOLDS", "SparseTopK", "densify", "in_vocab", "inner", "same_rows"]

HOLDS = ("logits", "logprobs", "samples")
"""What a knowledge codec's values are: raw logits (divided by the temperature),
log-probabilities ``log_softmax(logits / T)``, or token samples of ``softmax(logits / T)``."""


def inner(value: Value) -> np.ndarray:
    """The array of a field: itself, or a ragged field's values."""
    return value.values if isinstance(value, Ragged) else np.asarray(value)


def same_rows(like: Value, arr: np.ndarray) -> Value:
    """``arr`` (one row per position of ``like``) shaped as ``like``: ragged with its lengths."""
    return Ragged(arr, like.lengths) if isinstance(like, Ragged) else arr


def in_vocab(indices: np.ndarray, vocab: int) -> np.ndarray:
    """``indices`` after checking that all lie in ``[0, vocab)`` (vectorised min and max)."""
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= vocab:
            raise KnowledgeError(
                f"the stored indices hold {low if low < 0 else high}, outside the vocabulary "
                f"[0, {vocab}); the knowledge is corrupt (a file or a message was damaged, or "
                "written for another vocabulary size)"
            )
    return indices


def densify(
    values: np.ndarray, indices: np.ndarray, vocab: int, fill: float, dtype: Any
) -> np.ndarray:
    """``[..., vocab]`` filled with ``fill``, ``values`` put at ``indices`` (last axis)."""
    dt = np.dtype(dtype) if dtype is not None else values.dtype
    shape = (*values.shape[:-1], vocab)
    try:
        out = np.full(shape, fill, dtype=dt)
    except (MemoryError, ValueError):  # ValueError: more than numpy can address
        raise KnowledgeError(
            f"densifying to shape {list(shape)} ({dt}) needs "
            f"{math.prod(shape) * dt.itemsize / 2**30:.1f} GiB, more than can be allocated; "
            "read the knowledge sparse (sparse_topk=True) or in smaller batches"
        ) from None
    np.put_along_axis(out, indices.astype(np.intp, copy=False), values.astype(dt), axis=-1)
    return out


class SparseTopK:
    """Top-k knowledge in sparse form: ``values`` and ``indices`` of shape ``[..., k]``.

    Both are numpy arrays, or both :class:`~pantheon.Ragged` fields ``[n, -1, k]`` (per token).
    This decoded form is the same for every stored layout (float16/bfloat16/float32 values or
    8-bit quantized ones, indices of 16/32 bits or bit-packed):

    * ``values``: the kept entries sorted decreasingly, in their stored float dtype (float32
      for quantized values);
    * ``indices``: int32 positions in ``[0, vocab_size)``;
    * ``tail``: None, or (a codec with ``tail=True``) ``[..., 1]`` float: the log-sum-exp of
      the entries outside the top-k in the values' units; for log-probabilities
      ``log(1 - sum(exp(values)))``, the log of the probability mass the top-k leaves out;
    * ``holds``: ``"logits"`` (values are ``logits / temperature``), ``"logprobs"``
      (``log_softmax(logits / temperature)``) or None (unknown: files of an earlier layout
      written without ``log_softmax``);
    * ``temperature``: the ``T`` the values were computed at (1.0 for earlier files).

    Args:
        values: the kept entries (logits or log-probabilities), sorted decreasingly.
        indices: their positions in the vocabulary.
        vocab_size: ``V``.
        tail: see above (default None).
        holds: see above (default None).
        temperature: see above (default 1.0).
    """

    __slots__ = ("holds", "indices", "tail", "temperature", "values", "vocab_size")

    def __init__(
        self,
        values: Value,
        indices: Value,
        vocab_size: int,
        tail: Value | None = None,
        *,
        holds: str | None = None,
        temperature: float = 1.0,
    ) -> None:
        if isinstance(values, Ragged) != isinstance(indices, Ragged):
            raise KnowledgeError(
                "SparseTopK: values and indices must both be Ragged or both arrays"
            )
        vs, ix = inner(values), inner(indices)
        if vs.shape != ix.shape or vs.ndim < 1:
            raise KnowledgeError(
                f"SparseTopK: values {list(vs.shape)} and indices {list(ix.shape)} must have the "
                "same shape [..., k]"
            )
        if tail is not None and inner(tail).shape != (*vs.shape[:-1], 1):
            raise KnowledgeError(
                f"SparseTopK: tail {list(inner(tail).shape)} must have the shape [..., 1] of "
                f"values {list(vs.shape)} but the last axis"
            )
        if holds is not None and holds not in HOLDS:
            raise KnowledgeError(f"SparseTopK: holds must be one of {HOLDS}, got {holds!r}")
        self.values = values
        self.indices = indices
        self.vocab_size = int(vocab_size)
        self.tail = tail
        self.holds = holds
        self.temperature = float(temperature)

    @property
    def k(self) -> int:
        """The number of entries kept per position."""
        return int(inner(self.values).shape[-1])

    def dense(self, fill: float = float("-inf"), dtype: Any = None) -> Value:
        """The dense ``[..., V]`` form: the kept entries in place, ``fill`` elsewhere.

        Args:
            fill: the value of the entries outside the top-k (default ``-inf``).
            dtype: the output dtype (default: the values' dtype).
        """
        out = densify(inner(self.values), inner(self.indices), self.vocab_size, fill, dtype)
        return same_rows(self.values, out)

    def mass(self) -> np.ndarray:
        """Per position, the probability mass the kept entries hold: ``sum(exp(values))``
        (float64, ``[...]``; meaningful when ``holds == "logprobs"``)."""
        v = inner(self.values).astype(np.float64)
        return np.exp(v).sum(axis=-1)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.values)

    def _like(self, values: Value, indices: Value, tail: Value | None) -> SparseTopK:
        return SparseTopK(
            values, indices, self.vocab_size, tail, holds=self.holds, temperature=self.temperature
        )

    def slice(self, start: int, stop: int) -> SparseTopK:
        """Samples ``start:stop`` (views, no copy)."""
        tail = None if self.tail is None else slice_value(self.tail, start, stop)
        return self._like(
            slice_value(self.values, start, stop), slice_value(self.indices, start, stop), tail
        )

    def take(self, index: np.ndarray) -> SparseTopK:
        """Samples ``index`` (int array), in that order (a copy)."""
        tail = None if self.tail is None else take_value(self.tail, index)
        return self._like(take_value(self.values, index), take_value(self.indices, index), tail)

    @staticmethod
    def concat(parts: Sequence[SparseTopK]) -> SparseTopK:
        """Concatenate sample-wise."""
        first = parts[0]
        tails = [p.tail for p in parts if p.tail is not None]
        tail = concat_values(tails) if len(tails) == len(parts) else None
        return first._like(
            concat_values([p.values for p in parts]),
            concat_values([p.indices for p in parts]),
            tail,
        )

    def __repr__(self) -> str:
        return (
            f"SparseTopK(k={self.k}, vocab_size={self.vocab_size}, holds={self.holds!r}, "
            f"temperature={self.temperature:g}, tail={self.tail is not None}, "
            f"values={self.values!r})"
        )
