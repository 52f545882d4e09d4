"""Sampled knowledge: per position, ``n`` token ids drawn from the teacher's distribution.

``Sampled(n=12, temperature=1.0, seed=0)`` encodes a float field of logits ``[n, ..., V]`` or
a ragged ``[n, -1, V]`` field (per token). At every position it draws ``n`` tokens, with
replacement, from ``p = softmax(logits / temperature)`` (over the full vocabulary; the
exponentials in float32, their sums in float64) and keeps the distinct ids with their counts:
``counts / n`` estimates ``p`` without bias (importance-sampled sparse KD: the student's loss over the samples is an
unbiased estimate of its loss over ``p``). Stored parts:

* ``"ids"``: the distinct sampled ids in increasing order, then ``0`` in the unused slots,
  ``n`` slots bit-packed at ``ceil(log2(V))`` bits (:mod:`pantheon._codecs.bits`):
  ``uint8 [n, ..., ceil(n * bits / 8)]``;
* ``"counts"``: how many of the ``n`` draws gave each slot's id, ``uint8 [n, ..., n]``;
  unused slots count 0, and the counts of a position sum to ``n``.

``n = 12`` on a 151,936-token vocabulary (18 bits): ``27 + 12 = 39`` bytes per token.

Draws are reproducible: draw ``s`` at position ``t`` of sample ``i`` (``t`` counts the
sample's positions: its tokens, or its middle axes in C order) uses the uniform number
``(splitmix64(splitmix64(splitmix64(seed ^ i) ^ t) ^ s) >> 11) / 2**53``, where
``splitmix64(x)`` is SplitMix64's output function of ``x + 0x9E3779B97F4A7C15`` (arithmetic
modulo 2**64, the sample id's int64 bits read as unsigned), so the knowledge
of a sample depends only on its id, the seed and its logits, whatever the batching, the
worker or a resumed run. (Inverse-CDF sampling: the drawn token is the first whose cumulative
probability exceeds the uniform number.)

Spec: ``{"name": "sampled", "version": 1, "n", "temperature", "seed", "holds": "samples"}``;
registered as ``"sampled"``.

Decoded forms: :meth:`Sampled.sparse` gives a :class:`SparseSamples` (``ids`` int32
``[..., n]``, ``counts`` uint8 ``[..., n]``, ``vocab_size``, ``n``, ``temperature``);
``decode`` densifies to the empirical log-probabilities ``log(count / n)`` at the sampled ids,
``-inf`` elsewhere, in the field's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._chunks import take_value
from .._errors import ConfigError, KnowledgeError
from .._knowledge import FieldDesc, Ragged, Value, concat_values, slice_value, to_dtype
from .._util import check_int
from .base import FLOAT_DTYPES, register_codec
from .bits import bits_for, pack_bits, packed_size, unpack_bits
from .sparse import in_vocab, inner, same_rows

__all__ = ["Sampled", "SparseSamples", "uniforms"]

_CHUNK = 1 << 20  # entries per pass over the rows
_MAX_N = 255  # counts are uint8
_MAX_ROWS = 1000  # rows per pass
_BLOCK = 256  # tokens per block of the two-level search
_DENSE_LIMIT = 1 << 34  # bytes a dense decode may allocate (16 GiB)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def uniforms(seed: int, ids: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """``[rows, n]`` float64 uniform numbers in ``[0, 1)`` of the rows ``(ids[r], positions[r])``
    (see the module docstring; numpy's uint64 arithmetic wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        key = np.uint64(seed & (2**64 - 1)) ^ ids.astype(np.int64).view(np.uint64)
        key = _splitmix(_splitmix(key) ^ positions.astype(np.uint64))
        h = _splitmix(key[:, None] ^ np.arange(n, dtype=np.uint64)[None, :])
    out: np.ndarray = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def _last_positive(x: np.ndarray) -> np.ndarray:
    """Per row of ``[..., m]``, the index of the last entry > 0 (0 if none)."""
    m = x.shape[-1]
    found: np.ndarray = m - 1 - np.argmax(x[..., ::-1] > 0, axis=-1)
    return found


def _search(cum: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per draw, the first index whose cumulative weight ``cum [..., m]`` exceeds ``target
    [...]``; a target at or past the total (rounding) takes the last index of weight > 0."""
    found: np.ndarray = (cum <= target[..., None]).sum(axis=-1)
    over = found >= cum.shape[-1]
    if over.any():
        found[over] = _last_positive(weights)[over]
    return found


def _draw(rows: np.ndarray, u: np.ndarray, temperature: float) -> np.ndarray:
    """Token ids drawn by inverse CDF: ``[r, n]`` int64 from logits ``[r, V]``.

    Two levels, so that no cumulative sum runs over the whole vocabulary: the probabilities'
    sums over blocks of ``_BLOCK`` tokens (float64) locate each draw's block, then a
    cumulative sum over that block alone locates its token.
    """
    vocab = rows.shape[1]
    blocks = -(-vocab // _BLOCK)
    out = np.empty(u.shape, dtype=np.int64)
    step = max(1, min(_MAX_ROWS, _CHUNK // vocab))
    for start in range(0, len(rows), step):
        y = rows[start : start + step].astype(np.float32) / np.float32(temperature)
        top = y.max(axis=1, keepdims=True)
        if not np.isfinite(top).all():
            raise KnowledgeError(
                "sampled codec: a position's logits are all -inf, or hold NaN or +inf; expected "
                "finite logits (at least one per position)"
            )
        r = len(y)
        p = np.zeros((r, blocks * _BLOCK), dtype=np.float32)
        np.exp(y - top, out=p[:, :vocab])  # float32: relative error ~1e-7
        p = p.reshape(r, blocks, _BLOCK)
        mass = p.sum(axis=2, dtype=np.float64)
        bcum = np.cumsum(mass, axis=1)
        target = u[start : start + step] * bcum[:, -1:]  # [r, n]
        b = _search(
            bcum[:, None, :], target, np.broadcast_to(mass[:, None, :], (*target.shape, blocks))
        )
        before = np.where(b > 0, np.take_along_axis(bcum, np.maximum(b - 1, 0), axis=1), 0.0)
        seg = p[np.arange(r)[:, None], b]  # [r, n, _BLOCK]: each draw's block
        within = _search(np.cumsum(seg, axis=-1, dtype=np.float64), target - before, seg)
        out[start : start + step] = b * _BLOCK + within
    return out


def _unique_counts(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: distinct ids ascending (0 after them) and their counts (0 after them)."""
    rows, n = draws.shape
    s = np.sort(draws, axis=1)
    first = np.ones((rows, n), dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    slot = np.cumsum(first, axis=1) - 1
    flat = (np.arange(rows)[:, None] * n + slot).ravel()
    counts = np.bincount(flat, minlength=rows * n).reshape(rows, n)
    ids = np.zeros((rows, n), dtype=np.int64)
    r, c = np.nonzero(first)
    ids[r, slot[r, c]] = s[r, c]
    return ids, counts.astype(np.uint8)


class SparseSamples:
    """Sampled knowledge in sparse form: ``ids`` int32 and ``counts`` uint8, ``[..., n]``.

    Both numpy arrays, or both :class:`~pantheon.Ragged` ``[n, -1, n_slots]`` (per token). A
    position's distinct ids come first, increasing; unused slots hold id 0 with count 0; the
    counts sum to ``n``. ``counts / n`` is an unbiased estimate of the teacher's
    ``softmax(logits / temperature)`` at ``ids``.
    """

    __slots__ = ("counts", "ids", "n", "temperature", "vocab_size")
    holds = "samples"

    def __init__(
        self, ids: Value, counts: Value, vocab_size: int, n: int, temperature: float = 1.0
    ) -> None:
        if isinstance(ids, Ragged) != isinstance(counts, Ragged):
            raise KnowledgeError("SparseSamples: ids and counts must both be Ragged or both arrays")
        if inner(ids).shape != inner(counts).shape or inner(ids).ndim < 1:
            raise KnowledgeError(
                f"SparseSamples: ids {list(inner(ids).shape)} and counts "
                f"{list(inner(counts).shape)} must have the same shape [..., n]"
            )
        self.ids = ids
        self.counts = counts
        self.vocab_size = int(vocab_size)
        self.n = int(n)
        self.temperature = float(temperature)

    def dense(self, fill: float = float("-inf"), dtype: Any = None) -> Value:
        """``[..., V]``: ``log(count / n)`` at the sampled ids, ``fill`` elsewhere."""
        ids, counts = inner(self.ids), inner(self.counts)
        dt = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
        rows = int(np.prod(ids.shape[:-1], dtype=np.int64))
        flat = (np.arange(rows)[:, None] * self.vocab_size + ids.reshape(rows, -1)).ravel()
        size = rows * self.vocab_size
        if size * (8 + dt.itemsize) > _DENSE_LIMIT:
            raise KnowledgeError(
                f"sampled codec: densifying {rows} positions of {self.vocab_size} tokens needs "
                f"{size * (8 + dt.itemsize) / 2**30:.1f} GiB; read the knowledge sparse "
                "(sparse_topk=True) or in smaller batches"
            )
        probs = np.bincount(
            flat, weights=counts.reshape(-1) / self.n, minlength=rows * self.vocab_size
        )
        with np.errstate(divide="ignore"):
            out = np.where(probs > 0, np.log(probs), fill).astype(dt)
        return same_rows(self.ids, out.reshape((*ids.shape[:-1], self.vocab_size)))

    def __len__(self) -> int:
        return len(self.ids)

    def _like(self, ids: Value, counts: Value) -> SparseSamples:
        return SparseSamples(ids, counts, self.vocab_size, self.n, self.temperature)

    def slice(self, start: int, stop: int) -> SparseSamples:
        """Samples ``start:stop`` (views)."""
        return self._like(slice_value(self.ids, start, stop), slice_value(self.counts, start, stop))

    def take(self, index: np.ndarray) -> SparseSamples:
        """Samples ``index``, in that order (a copy)."""
        return self._like(take_value(self.ids, index), take_value(self.counts, index))

    @staticmethod
    def concat(parts: Sequence[SparseSamples]) -> SparseSamples:
        """Concatenate sample-wise."""
        return parts[0]._like(
            concat_values([p.ids for p in parts]), concat_values([p.counts for p in parts])
        )

    def __repr__(self) -> str:
        return (
            f"SparseSamples(n={self.n}, vocab_size={self.vocab_size}, "
            f"temperature={self.temperature:g}, ids={self.ids!r})"
        )


class Sampled:
    """The sampled-knowledge codec (see the module docstring).

    Args:
        n: draws per position, 1 to 255 (default 12).
        temperature: ``T`` > 0: draws from ``softmax(logits / T)`` (default 1.0).
        seed: any int; with the sample ids it fixes every draw (default 0).
    """

    name = "sampled"
    holds = "samples"

    def __init__(self, n: int = 12, temperature: float = 1.0, seed: int = 0) -> None:
        self.n = check_int("Sampled: n", n, unit="draws per position")
        if self.n > _MAX_N:
            raise ConfigError(f"Sampled: n must be at most {_MAX_N} (uint8 counts), got {n}")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (0 < temperature < float("inf"))
        ):
            raise ConfigError(f"Sampled: temperature must be a number > 0, got {temperature!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"Sampled: seed must be an int, got {seed!r}")
        self.temperature = float(temperature)
        self.seed = seed

    def spec(self) -> dict[str, Any]:
        """``{"name": "sampled", "version": 1, "n", "temperature", "seed", "holds"}``."""
        return {
            "name": self.name,
            "version": 1,
            "n": self.n,
            "temperature": self.temperature,
            "seed": self.seed,
            "holds": self.holds,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Sampled:
        """Rebuild from :meth:`spec` (``{"name": "sampled"}`` alone: the defaults).

        Raises:
            ConfigError: unknown keys, another version, or invalid parameters.
        """
        extra = sorted(set(spec) - {"name", "version", "n", "temperature", "seed", "holds"})
        if extra or spec.get("version", 1) != 1 or spec.get("holds", "samples") != "samples":
            raise ConfigError(
                f"the sampled codec (version 1) takes 'n', 'temperature' and 'seed', got "
                f"{dict(spec)!r}"
            )
        return cls(spec.get("n", 12), spec.get("temperature", 1.0), spec.get("seed", 0))

    def check(self, key: str, field: FieldDesc) -> None:
        """Raise :class:`~pantheon.ConfigError` unless ``field`` holds float logits with a
        known vocabulary axis (``[n, ..., V]`` or ragged ``[n, -1, V]``)."""
        shape = list(field.get("shape", []))
        if field.get("dtype") not in FLOAT_DTYPES:
            raise ConfigError(
                f"cannot store knowledge {key!r} ({field.get('dtype')}) with Sampled: it draws "
                "tokens from float logits"
            )
        if len(shape) < (3 if field.get("lod_level", 0) else 2) or not 1 <= int(shape[-1]) < 2**31:
            raise ConfigError(
                f"cannot store knowledge {key!r} of shape {shape} with Sampled: expected a last "
                "(vocabulary) axis of known length, e.g. [-1, V] or ragged [-1, -1, V]"
            )

    def encode(self, value: Value) -> dict[str, Value]:
        """As :meth:`encode_ids` with sample ids ``0, 1, ...``."""
        return self.encode_ids(value, np.arange(len(value), dtype=np.int64))

    def encode_ids(self, value: Value, ids: np.ndarray) -> dict[str, Value]:
        """Parts ``{"ids", "counts"}`` of a batch whose samples have the ids ``ids``.

        Raises:
            KnowledgeError: not float logits with a vocabulary axis, or a position whose
                logits are all ``-inf`` or not finite.
        """
        arr = inner(value)
        if arr.dtype.kind != "f" and arr.dtype != to_dtype("bfloat16"):
            raise KnowledgeError(f"sampled codec: expected float logits, got {arr.dtype}")
        if arr.ndim < 2:
            raise KnowledgeError(
                f"sampled codec: expected a vocabulary axis, got shape {list(arr.shape)}"
            )
        vocab = int(arr.shape[-1])
        rows = arr.reshape(-1, vocab)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(value),):
            raise KnowledgeError(
                f"sampled codec: expected one sample id per sample ({len(value)}), got ids of "
                f"shape {list(ids.shape)}"
            )
        if isinstance(value, Ragged):
            lengths = value.lengths
            row_ids = np.repeat(ids, lengths)
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            pos = np.arange(len(rows), dtype=np.int64) - starts
        else:
            per = len(rows) // max(1, len(ids))  # positions per sample
            row_ids = np.repeat(ids, per)
            pos = np.tile(np.arange(per, dtype=np.int64), len(ids))
        u = uniforms(self.seed, row_ids, pos, self.n)
        tokens, counts = _unique_counts(_draw(rows, u, self.temperature))
        lead = arr.shape[:-1]
        packed = pack_bits(tokens, bits_for(vocab)).reshape((*lead, -1))
        return {
            "ids": same_rows(value, packed),
            "counts": same_rows(value, counts.reshape((*lead, self.n))),
        }

    def sparse(self, parts: Mapping[str, Value], field: FieldDesc) -> SparseSamples:
        """The parts as a :class:`SparseSamples`.

        Raises:
            KnowledgeError: missing or malformed parts, an id outside ``[0, V)``, or counts
                that do not sum to ``n`` (corrupt knowledge).
        """
        vocab = int(field["shape"][-1])
        if "ids" not in parts or "counts" not in parts:
            raise KnowledgeError(
                f"sampled codec: expected the parts ['counts', 'ids'], got {sorted(parts)}"
            )
        stored, counts = parts["ids"], parts["counts"]
        bits = bits_for(vocab)
        raw, cs = inner(stored), inner(counts)
        if (
            raw.dtype != np.uint8
            or raw.shape[-1] != packed_size(self.n, bits)
            or (cs.dtype != np.uint8 or cs.shape != (*raw.shape[:-1], self.n))
        ):
            raise KnowledgeError(
                f"sampled codec: expected ids packed at {bits} bits ({packed_size(self.n, bits)} "
                f"bytes) and uint8 counts [..., {self.n}], got {raw.dtype} {list(raw.shape)} and "
                f"{cs.dtype} {list(cs.shape)}; the knowledge is corrupt"
            )
        if cs.size and (cs.sum(axis=-1, dtype=np.int64) != self.n).any():
            raise KnowledgeError(
                f"sampled codec: a position's counts do not sum to n={self.n}; the knowledge is "
                "corrupt"
            )
        ids = in_vocab(unpack_bits(raw, bits, self.n), vocab)
        return SparseSamples(same_rows(stored, ids), counts, vocab, self.n, self.temperature)

    def decode(self, parts: Mapping[str, Value], field: FieldDesc) -> Value:
        """The empirical log-probabilities ``[n, ..., V]`` in the field's dtype (``-inf``
        where nothing was drawn)."""
        return self.sparse(parts, field).dense(dtype=to_dtype(field["dtype"]))

    def __repr__(self) -> str:
        return f"Sampled(n={self.n}, temperature={self.temperature:g}, seed={self.seed})"


register_codec(Sampled.name, Sampled.from_spec)
