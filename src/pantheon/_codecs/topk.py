"""Top-k sparsification of large-vocabulary logits: a codec keeping the k largest entries.

``TopK(k)`` encodes a float field of shape ``[n, V]``, ``[n, T, V]`` (any number of middle
axes) or a ragged ``[n, -1, V]`` field (per token) into two parts:

* ``"values"``: the k largest entries along the last axis, sorted in decreasing order,
  ``[n, ..., k]`` in ``values_dtype`` (default float16); with ``log_softmax=True`` the entries
  are log-probabilities ``x - logsumexp(x)`` over the full vocabulary (computed in float32
  before the cut), otherwise the raw values (logits);
* ``"indices"``: their positions in ``[0, V)``, ``[n, ..., k]``. For ``V <= 65536`` they are
  stored as 2 bytes: an ``int16`` array holding the ``uint16`` bits (read it with
  ``.view(numpy.uint16)``); for larger vocabularies ``int32``.

A ragged field's parts are ragged fields with the same lengths. Top-20 of a 32k vocabulary with
float16 values takes ``20 * (2 + 2) = 80`` bytes per token, against ``2 * 32000 = 64000`` for
dense float16 logits (0.125 %).

The codec is registered as ``"topk"`` (``codec_from_spec({"name": "topk", "k": 20})``) when
this module is imported.

``decode`` densifies back to the field's original dtype and shape: the entries outside the top-k
are ``fill``, by default ``-inf`` (a probability of 0 for logits and log-probabilities); give
``fill=`` to choose another (e.g. ``0.0`` for probabilities). To use the sparse form directly
(e.g. :func:`pantheon.torch.topk_kl`), take a :class:`SparseTopK` from :meth:`TopK.sparse`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import ConfigError, KnowledgeError
from .._knowledge import FieldDesc, Ragged, Value, concat_values, slice_value, to_dtype
from .._util import check_int
from .base import FLOAT_DTYPES, register_codec

__all__ = ["SparseTopK", "TopK", "index_dtype", "unpack_indices"]

_VALUE_DTYPES = ("float16", "bfloat16", "float32")
_U16_LIMIT = 1 << 16


def index_dtype(vocab_size: int) -> np.dtype[Any]:
    """The stored dtype of the indices for a vocabulary: int16 (uint16 bits) or int32."""
    if vocab_size <= _U16_LIMIT:
        return np.dtype(np.int16)
    if vocab_size < 2**31:
        return np.dtype(np.int32)
    raise KnowledgeError(f"top-k: a vocabulary of {vocab_size} entries needs indices >= 2**31")


def unpack_indices(indices: np.ndarray) -> np.ndarray:
    """Stored indices as int32 (int16 storage holds uint16 bits)."""
    if indices.dtype == np.int16:
        return indices.view(np.uint16).astype(np.int32)
    return indices.astype(np.int32, copy=False)


_BLOCK = 32  # entries per group of the candidate filter
_CHUNK = 1 << 20  # entries per pass over the rows


def _select_simple(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row of a 2-D array (unsorted)."""
    vocab = x.shape[1]
    if k >= vocab:
        every: np.ndarray = np.broadcast_to(np.arange(vocab), x.shape).copy()
        return every
    part: np.ndarray = np.argpartition(x, vocab - k, axis=1)
    return part[:, vocab - k :]


def _select_filtered(x: np.ndarray, k: int) -> np.ndarray:
    """As :func:`_select_simple`, several times faster on large vocabularies: split each row
    into disjoint groups (strided, ``j, j + nb, j + 2 nb, ...``); the k-th largest of the
    groups' maxima bounds the row's k-th largest entry from below (k groups each hold an entry
    at least that large), so only the entries above it are candidates."""
    rows, vocab = x.shape
    bs = max(1, min(_BLOCK, vocab // k))
    nb = vocab // bs
    bmax = x[:, : nb * bs].reshape(rows, bs, nb).max(axis=1)
    if nb * bs < vocab:
        bmax = np.concatenate([bmax, x[:, nb * bs :].max(axis=1, keepdims=True)], axis=1)
    nblocks = bmax.shape[1]
    thresh = np.partition(bmax, nblocks - k, axis=1)[:, nblocks - k]
    flat = np.flatnonzero(x >= thresh[:, None])  # much faster than a 2-D nonzero
    r = flat // vocab
    c = flat - r * vocab
    counts = np.bincount(r, minlength=rows)
    width = int(counts.max()) if rows else 0
    if rows == 0 or counts.min() < k or width > vocab // 4:  # NaNs, -inf, many ties
        return _select_simple(x, k)
    starts = np.zeros(rows, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    pos = np.arange(len(r)) - starts[r]
    cand = np.full((rows, width), -np.inf, dtype=x.dtype)
    cand[r, pos] = x[r, c]
    cols = np.zeros((rows, width), dtype=np.int64)
    cols[r, pos] = c
    best = np.argpartition(cand, width - k, axis=1)[:, width - k :]
    return np.take_along_axis(cols, best, axis=1)


def _topk_rows(x: np.ndarray, k: int, log_softmax: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-k along the last axis of a float array: (values float32/64, indices int64), sorted
    decreasingly; with ``log_softmax`` the values are ``x - logsumexp(x)`` over the row."""
    vocab = x.shape[-1]
    flat = x.reshape(-1, vocab)
    wide = np.float32 if x.dtype.itemsize < 4 else x.dtype
    vals = np.empty((flat.shape[0], k), dtype=wide)
    idx = np.empty((flat.shape[0], k), dtype=np.int64)
    step = max(1, _CHUNK // vocab)  # rows at a time, so that each pass stays in cache
    for start in range(0, flat.shape[0], step):
        rows = flat[start : start + step].astype(wide, copy=False)
        sel = _select_filtered(rows, k) if vocab >= 8 * k else _select_simple(rows, k)
        v = np.take_along_axis(rows, sel, axis=1)
        if log_softmax:
            top = np.max(rows, axis=1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0)
            v = v - (top + np.log(np.sum(np.exp(rows - top), axis=1, keepdims=True)))
        order = np.argsort(-v, axis=1, kind="stable")
        vals[start : start + step] = np.take_along_axis(v, order, axis=1)
        idx[start : start + step] = np.take_along_axis(sel, order, axis=1)
    shape = (*x.shape[:-1], k)
    return vals.reshape(shape), idx.reshape(shape)


class SparseTopK:
    """Top-k knowledge in sparse form: ``values`` and ``indices`` of shape ``[..., k]``.

    Both are numpy arrays, or both :class:`~pantheon.Ragged` fields ``[n, -1, k]`` (per token).
    ``indices`` are int32 positions in ``[0, vocab_size)``.

    Args:
        values: the kept entries (logits or log-probabilities), sorted decreasingly.
        indices: their positions in the vocabulary.
        vocab_size: ``V``.
    """

    __slots__ = ("indices", "values", "vocab_size")

    def __init__(self, values: Value, indices: Value, vocab_size: int) -> None:
        if isinstance(values, Ragged) != isinstance(indices, Ragged):
            raise KnowledgeError(
                "SparseTopK: values and indices must both be Ragged or both arrays"
            )
        vs = values.values if isinstance(values, Ragged) else values
        ix = indices.values if isinstance(indices, Ragged) else indices
        if vs.shape != ix.shape or vs.ndim < 1:
            raise KnowledgeError(
                f"SparseTopK: values {list(vs.shape)} and indices {list(ix.shape)} must have the "
                "same shape [..., k]"
            )
        self.values = values
        self.indices = indices
        self.vocab_size = int(vocab_size)

    @property
    def k(self) -> int:
        """The number of entries kept per position."""
        v = self.values.values if isinstance(self.values, Ragged) else self.values
        return int(v.shape[-1])

    def dense(self, fill: float = float("-inf"), dtype: Any = None) -> Value:
        """The dense ``[..., V]`` form: the kept entries in place, ``fill`` elsewhere.

        Args:
            fill: the value of the entries outside the top-k (default ``-inf``).
            dtype: the output dtype (default: the values' dtype).
        """
        if isinstance(self.values, Ragged):
            assert isinstance(self.indices, Ragged)
            out = _densify(self.values.values, self.indices.values, self.vocab_size, fill, dtype)
            return Ragged(out, self.values.lengths)
        assert isinstance(self.indices, np.ndarray)
        return _densify(self.values, self.indices, self.vocab_size, fill, dtype)

    def __len__(self) -> int:
        return len(self.values)

    def slice(self, start: int, stop: int) -> SparseTopK:
        """Samples ``start:stop`` (views, no copy)."""
        return SparseTopK(
            slice_value(self.values, start, stop),
            slice_value(self.indices, start, stop),
            self.vocab_size,
        )

    @staticmethod
    def concat(parts: Sequence[SparseTopK]) -> SparseTopK:
        """Concatenate sample-wise."""
        return SparseTopK(
            concat_values([p.values for p in parts]),
            concat_values([p.indices for p in parts]),
            parts[0].vocab_size,
        )

    def __repr__(self) -> str:
        return f"SparseTopK(k={self.k}, vocab_size={self.vocab_size}, values={self.values!r})"


def _in_vocab(indices: np.ndarray, vocab: int) -> np.ndarray:
    """``indices`` after checking that all lie in ``[0, vocab)`` (vectorised min and max)."""
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= vocab:
            raise KnowledgeError(
                f"top-k codec: the stored indices hold {low if low < 0 else high}, outside the "
                f"vocabulary [0, {vocab}); the knowledge is corrupt (a file or a message was "
                "damaged, or written for another vocabulary size)"
            )
    return indices


def _densify(
    values: np.ndarray, indices: np.ndarray, vocab: int, fill: float, dtype: Any
) -> np.ndarray:
    dt = np.dtype(dtype) if dtype is not None else values.dtype
    shape = (*values.shape[:-1], vocab)
    try:
        out = np.full(shape, fill, dtype=dt)
    except (MemoryError, ValueError):  # ValueError: more than numpy can address
        raise KnowledgeError(
            f"top-k codec: densifying to shape {list(shape)} ({dt}) needs "
            f"{math.prod(shape) * dt.itemsize / 2**30:.1f} GiB, more than can be allocated; "
            "read the knowledge sparse (sparse_topk=True) or in smaller batches"
        ) from None
    np.put_along_axis(out, indices.astype(np.intp, copy=False), values.astype(dt), axis=-1)
    return out


class TopK:
    """The top-k codec (see the module docstring).

    Args:
        k: entries kept per position (>= 1, default 20).
        values_dtype: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
        log_softmax: store log-probabilities over the full vocabulary instead of raw values
            (default False).
        fill: the densified value outside the top-k (default ``None``: ``-inf``).
    """

    name = "topk"

    def __init__(
        self,
        k: int = 20,
        values_dtype: str = "float16",
        log_softmax: bool = False,
        fill: float | None = None,
    ) -> None:
        if not isinstance(values_dtype, str) or values_dtype not in _VALUE_DTYPES:
            raise ConfigError(
                f"TopK: values_dtype must be one of {list(_VALUE_DTYPES)}, got {values_dtype!r}"
            )
        self.k = check_int("TopK: k", k, unit="entries per position")
        self.values_dtype = values_dtype
        self.log_softmax = bool(log_softmax)
        self.fill = None if fill is None else float(fill)

    def spec(self) -> dict[str, Any]:
        """The JSON-able description of this codec (``TopK.from_spec`` rebuilds it)."""
        return {
            "name": self.name,
            "k": self.k,
            "values_dtype": self.values_dtype,
            "log_softmax": self.log_softmax,
            "fill": self.fill,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> TopK:
        """Rebuild a codec from :meth:`spec`'s output (``{"name": "topk"}`` alone: top-20).

        Raises:
            ConfigError: another codec's spec, unknown keys, or invalid parameters.
        """
        if spec.get("name") != cls.name:
            raise ConfigError(f"not a top-k codec spec: {dict(spec)!r}")
        extra = sorted(set(spec) - {"name", "k", "values_dtype", "log_softmax", "fill"})
        if extra:
            raise ConfigError(
                f"the topk codec takes 'k', 'values_dtype', 'log_softmax' and 'fill', got also "
                f"{extra} in {dict(spec)!r}"
            )
        fill = spec.get("fill")
        if fill is not None and not isinstance(fill, (int, float)):
            raise ConfigError(f"the topk codec's fill must be a number or null, got {fill!r}")
        log_softmax = spec.get("log_softmax", False)
        if not isinstance(log_softmax, bool):
            raise ConfigError(f"the topk codec's log_softmax must be a bool, got {log_softmax!r}")
        return cls(
            spec.get("k", 20),
            values_dtype=spec.get("values_dtype", "float16"),
            log_softmax=log_softmax,
            fill=fill,
        )

    def check(self, key: str, field: FieldDesc) -> None:
        """Raise :class:`~pantheon.ConfigError` unless ``field`` is a float field with a known
        vocabulary axis of at least ``k`` entries (``[n, ..., V]`` or ragged ``[n, -1, V]``)."""
        shape = list(field.get("shape", []))
        dtype = field.get("dtype")
        min_dims = 3 if field.get("lod_level", 0) else 2
        if dtype not in FLOAT_DTYPES:
            raise ConfigError(
                f"cannot store knowledge {key!r} ({dtype}) with TopK: top-k applies to float "
                "fields (logits, log-probabilities)"
            )
        if len(shape) < min_dims or int(shape[-1]) < self.k:
            raise ConfigError(
                f"cannot store knowledge {key!r} of shape {shape} with TopK(k={self.k}): "
                f"expected a last (vocabulary) axis of at least {self.k} entries, e.g. "
                "[-1, V], [-1, T, V] or ragged [-1, -1, V]"
            )
        if int(shape[-1]) >= 2**31:
            raise ConfigError(
                f"cannot store knowledge {key!r} of shape {shape} with TopK: a vocabulary of "
                f"{shape[-1]} entries needs indices of 2**31 or more (int32 at most)"
            )

    def _encode_array(self, x: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
        if x.dtype.kind != "f" and x.dtype != to_dtype("bfloat16"):
            raise KnowledgeError(f"top-k codec: {where} has dtype {x.dtype}; expected floats")
        vocab = int(x.shape[-1])
        if self.k > vocab:
            raise KnowledgeError(
                f"top-k codec: k={self.k} is larger than the last axis ({vocab}) of {where}"
            )
        vals, idx = _topk_rows(x, self.k, self.log_softmax)
        return vals.astype(to_dtype(self.values_dtype)), idx.astype(index_dtype(vocab))

    def encode(self, value: Value) -> dict[str, Value]:
        """Parts ``{"values": ..., "indices": ...}`` of a dense or ragged float field.

        Raises:
            KnowledgeError: not floats, no vocabulary axis, or ``k`` above the vocabulary.
        """
        if isinstance(value, Ragged):
            if value.values.ndim < 2:
                raise KnowledgeError(
                    "top-k codec: a ragged field needs a vocabulary axis after the variable "
                    f"one ([n, -1, V]); got inner shape {list(value.inner_shape)}"
                )
            vals, idx = self._encode_array(value.values, "the ragged field")
            return {"values": Ragged(vals, value.lengths), "indices": Ragged(idx, value.lengths)}
        arr = np.asarray(value)
        if arr.ndim < 2:
            raise KnowledgeError(
                f"top-k codec: expected a field [n, ..., V] with a vocabulary axis, got shape "
                f"{list(arr.shape)}"
            )
        vals, idx = self._encode_array(arr, "the field")
        return {"values": vals, "indices": idx}

    def sparse(self, parts: Mapping[str, Value], field: FieldDesc) -> SparseTopK:
        """The parts as a :class:`SparseTopK` (int32 indices, values as stored).

        Raises:
            KnowledgeError: missing parts, or an index outside ``[0, V)`` (corrupt parts: a
                negative index would otherwise land on position ``V - 1``).
        """
        vocab = int(field["shape"][-1])
        if vocab <= 0:
            raise KnowledgeError(f"top-k codec: the field's last axis must be known, got {field}")
        try:
            values, indices = parts["values"], parts["indices"]
        except KeyError as exc:
            raise KnowledgeError(
                f"top-k codec: expected the parts 'values' and 'indices', got {sorted(parts)}"
            ) from exc
        if isinstance(indices, Ragged):
            indices = Ragged(_in_vocab(unpack_indices(indices.values), vocab), indices.lengths)
        else:
            indices = _in_vocab(unpack_indices(np.asarray(indices)), vocab)
        return SparseTopK(values, indices, vocab)

    def decode(self, parts: Mapping[str, Value], field: FieldDesc) -> Value:
        """The dense field ``[n, ..., V]`` in the field's original dtype (``fill`` outside the
        top-k, default ``-inf``)."""
        fill = float("-inf") if self.fill is None else self.fill
        return self.sparse(parts, field).dense(fill, to_dtype(field["dtype"]))


register_codec(TopK.name, TopK.from_spec)
