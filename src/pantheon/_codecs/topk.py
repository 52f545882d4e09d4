"""Top-k sparsification of large-vocabulary logits: a codec keeping the k largest entries.

``TopK(k)`` encodes a float field of shape ``[n, V]``, ``[n, T, V]`` (any number of middle
axes) or a ragged ``[n, -1, V]`` field (per token). The entries are ``y = x / temperature``
(``temperature`` default 1.0); with ``log_softmax=True`` they are log-probabilities
``y - logsumexp(y)`` over the full vocabulary (computed in float32 before the cut), otherwise
the scaled logits ``y``. Stored parts (layout 2, spec ``"version": 2``):

* ``"values"``: the k largest entries, sorted decreasingly, ``[n, ..., k]`` in
  ``values_dtype``: ``"float16"`` (default), ``"bfloat16"``, ``"float32"``, or ``"uint8"``:
  8-bit codes relative to each position's maximum, with the part ``"scale"``
  ``float16 [n, ..., 2]`` holding that position's ``(max, step)``
  (:mod:`pantheon._codecs.quant`: error at most ``step / 2 + 2**-11 * |max|``, step =
  the span of the kept values / 254);
* ``"indices"``: their positions in ``[0, V)``, bit-packed at ``ceil(log2(V))`` bits per index
  (:mod:`pantheon._codecs.bits`): ``uint8 [n, ..., ceil(k * bits / 8)]`` (18 bits, 36 bytes for
  top-16 of a 152k vocabulary);
* ``"tail"`` (with ``tail=True``): ``[n, ..., 1]`` (float32 for float32 values, else float16):
  the log-sum-exp of the entries outside the top-k in the values' units; for
  log-probabilities ``log(1 - sum(exp(values)))``, computed from the full row before the cut.

A ragged field's parts are ragged fields with the same lengths. Bytes per token: ``k * 2``
(float16) or ``k + 4`` (uint8) for the values, ``ceil(k * bits / 8)`` for the indices, 2 for a
tail: top-16, float16, V = 151,936: 68 bytes; uint8 with tail: 58 bytes.

Layout 1 (files of earlier versions; a spec of exactly ``name, k, values_dtype, log_softmax,
fill``, without ``"version"``) stored the indices as
``int16`` holding ``uint16`` bits for ``V <= 65536``, else ``int32``, without tail,
temperature or quantized values; such files are still read.

The spec records what the values hold: ``"holds": "logprobs" | "logits"`` and
``"temperature"``, so a student can re-temper (``pantheon inspect`` shows both).

The codec is registered as ``"topk"`` (``codec_from_spec({"name": "topk", "k": 20})``) when
this module is imported.

Decoded forms (stable across layouts): ``decode`` densifies back to the field's original dtype
and shape, entries outside the top-k being ``fill`` (default ``-inf``: a probability of 0);
:meth:`TopK.sparse` gives a :class:`~pantheon.SparseTopK`: ``values`` (float, float32 when
quantized), ``indices`` int32, ``tail`` (or None), ``holds`` and ``temperature``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import ConfigError, KnowledgeError
from .._knowledge import FieldDesc, Ragged, Value, to_dtype
from .._util import check_int
from .base import FLOAT_DTYPES, register_codec
from .bits import bits_for, pack_bits, packed_size, unpack_bits
from .quant import dequantize, quantize
from .select import topk_rows
from .sparse import SparseTopK, in_vocab, inner, same_rows

__all__ = ["LAYOUT", "TopK", "index_dtype", "unpack_indices"]

LAYOUT = 2
"""The layout :class:`TopK` writes (its spec's ``"version"``)."""
_VALUE_DTYPES = ("float16", "bfloat16", "float32", "uint8")
_U16_LIMIT = 1 << 16
_V1_KEYS = {"name", "k", "values_dtype", "log_softmax", "fill"}
_SPEC_KEYS = _V1_KEYS | {"version", "temperature", "tail", "holds"}


def index_dtype(vocab_size: int) -> np.dtype[Any]:
    """Layout 1's stored dtype of the indices for a vocabulary: int16 (uint16 bits) or int32."""
    if vocab_size <= _U16_LIMIT:
        return np.dtype(np.int16)
    if vocab_size < 2**31:
        return np.dtype(np.int32)
    raise KnowledgeError(f"top-k: a vocabulary of {vocab_size} entries needs indices >= 2**31")


def unpack_indices(indices: np.ndarray) -> np.ndarray:
    """Layout 1's stored indices as int32 (int16 storage holds uint16 bits)."""
    if indices.dtype == np.int16:
        return indices.view(np.uint16).astype(np.int32)
    return indices.astype(np.int32, copy=False)


def _number(spec: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = spec.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"the topk codec's {key} must be a number, got {value!r}")
    return None if value is None else float(value)


def _flag(spec: Mapping[str, Any], key: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"the topk codec's {key} must be a bool, got {value!r}")
    return value


class TopK:
    """The top-k codec (see the module docstring).

    Args:
        k: entries kept per position (>= 1, default 20).
        values_dtype: ``"float16"`` (default), ``"bfloat16"``, ``"float32"``, or ``"uint8"``
            (8-bit codes relative to each position's maximum, ``k + 4`` bytes per position).
        log_softmax: store log-probabilities ``log_softmax(x / temperature)`` over the full
            vocabulary instead of the logits ``x / temperature`` (default False).
        fill: the densified value outside the top-k (default ``None``: ``-inf``).
        temperature: ``T`` > 0 the logits are divided by before anything else (default 1.0).
        tail: also store the log-sum-exp of the entries outside the top-k (for log-probs
            ``log(1 - sum p)``), 2 bytes per position (default False).
    """

    name = "topk"

    def __init__(
        self,
        k: int = 20,
        values_dtype: str = "float16",
        log_softmax: bool = False,
        fill: float | None = None,
        *,
        temperature: float = 1.0,
        tail: bool = False,
        layout: int = LAYOUT,
    ) -> None:
        if not isinstance(values_dtype, str) or values_dtype not in _VALUE_DTYPES:
            raise ConfigError(
                f"TopK: values_dtype must be one of {list(_VALUE_DTYPES)}, got {values_dtype!r}"
            )
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (0 < temperature < float("inf"))
        ):
            raise ConfigError(f"TopK: temperature must be a number > 0, got {temperature!r}")
        if isinstance(layout, bool) or layout not in (1, LAYOUT):
            raise ConfigError(f"TopK: layout must be 1 or {LAYOUT}, got {layout!r}")
        if layout == 1 and (values_dtype == "uint8" or tail or temperature != 1.0):
            raise ConfigError(
                "TopK: layout 1 (files of earlier versions) has no uint8 values, tail or "
                "temperature"
            )
        self.k = check_int("TopK: k", k, unit="entries per position")
        self.values_dtype = values_dtype
        self.log_softmax = bool(log_softmax)
        self.fill = None if fill is None else float(fill)
        self.temperature = float(temperature)
        self.tail = bool(tail)
        self.layout = layout

    @property
    def holds(self) -> str:
        """``"logprobs"`` or ``"logits"``: what the stored values are."""
        return "logprobs" if self.log_softmax else "logits"

    def spec(self) -> dict[str, Any]:
        """The JSON-able description of this codec (``TopK.from_spec`` rebuilds it)."""
        base = {
            "name": self.name,
            "k": self.k,
            "values_dtype": self.values_dtype,
            "log_softmax": self.log_softmax,
            "fill": self.fill,
        }
        if self.layout == 1:
            return base
        return {
            **base,
            "version": self.layout,
            "holds": self.holds,
            "temperature": self.temperature,
            "tail": self.tail,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> TopK:
        """Rebuild a codec from :meth:`spec`'s output. A spec without ``"version"`` is of the
        current layout (``{"name": "topk"}`` alone: top-20), except a spec of exactly the five
        keys ``name, k, values_dtype, log_softmax, fill``: layout 1, as every file written
        before layout 2 holds.

        Raises:
            ConfigError: another codec's spec, unknown keys, or invalid parameters.
        """
        if spec.get("name") != cls.name:
            raise ConfigError(f"not a top-k codec spec: {dict(spec)!r}")
        # every spec written before layout 2 carried exactly the five keys of layout 1
        version = spec.get("version", 1 if set(spec) == _V1_KEYS else LAYOUT)
        allowed = _SPEC_KEYS if version != 1 else _V1_KEYS
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ConfigError(
                f"the topk codec (layout {version!r}) takes {sorted(allowed - {'name'})}, got "
                f"also {extra} in {dict(spec)!r}"
            )
        log_softmax = _flag(spec, "log_softmax")
        holds = spec.get("holds", "logprobs" if log_softmax else "logits")
        if holds != ("logprobs" if log_softmax else "logits"):
            raise ConfigError(
                f"the topk codec's holds {holds!r} contradicts its log_softmax {log_softmax!r}"
            )
        temperature = _number(spec, "temperature", 1.0)
        return cls(
            spec.get("k", 20),
            values_dtype=spec.get("values_dtype", "float16"),
            log_softmax=log_softmax,
            fill=_number(spec, "fill", None),
            temperature=1.0 if temperature is None else temperature,
            tail=_flag(spec, "tail"),
            layout=version,
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

    def _encode_array(self, x: np.ndarray, where: str) -> dict[str, np.ndarray]:
        if x.dtype.kind != "f" and x.dtype != to_dtype("bfloat16"):
            raise KnowledgeError(f"top-k codec: {where} has dtype {x.dtype}; expected floats")
        vocab = int(x.shape[-1])
        if self.k > vocab:
            raise KnowledgeError(
                f"top-k codec: k={self.k} is larger than the last axis ({vocab}) of {where}"
            )
        vals, idx, tail = topk_rows(
            x, self.k, log_softmax=self.log_softmax, temperature=self.temperature, tail=self.tail
        )
        if self.layout == 1:
            values = vals.astype(to_dtype(self.values_dtype))
            return {"values": values, "indices": idx.astype(index_dtype(vocab))}
        out: dict[str, np.ndarray] = {}
        if self.values_dtype == "uint8":
            out["values"], out["scale"] = quantize(vals)
        else:
            out["values"] = vals.astype(to_dtype(self.values_dtype))
        out["indices"] = pack_bits(idx, bits_for(vocab))
        if tail is not None:
            out["tail"] = tail.astype(np.float32 if self.values_dtype == "float32" else np.float16)
        return out

    def encode(self, value: Value) -> dict[str, Value]:
        """Parts ``{"values", "indices"}`` (plus ``"scale"`` for uint8 values, ``"tail"`` with
        ``tail=True``) of a dense or ragged float field.

        Raises:
            KnowledgeError: not floats, no vocabulary axis, or ``k`` above the vocabulary.
        """
        if isinstance(value, Ragged):
            if value.values.ndim < 2:
                raise KnowledgeError(
                    "top-k codec: a ragged field needs a vocabulary axis after the variable "
                    f"one ([n, -1, V]); got inner shape {list(value.inner_shape)}"
                )
            parts = self._encode_array(value.values, "the ragged field")
            return {name: Ragged(arr, value.lengths) for name, arr in parts.items()}
        arr = np.asarray(value)
        if arr.ndim < 2:
            raise KnowledgeError(
                f"top-k codec: expected a field [n, ..., V] with a vocabulary axis, got shape "
                f"{list(arr.shape)}"
            )
        return dict(self._encode_array(arr, "the field"))

    def _indices(self, stored: np.ndarray, vocab: int) -> np.ndarray:
        if self.layout == 1:
            return unpack_indices(stored)
        bits = bits_for(vocab)
        if stored.dtype != np.uint8 or stored.shape[-1] != packed_size(self.k, bits):
            raise KnowledgeError(
                f"top-k codec: expected indices packed at {bits} bits, "
                f"{packed_size(self.k, bits)} bytes per position (k={self.k}, V={vocab}), got "
                f"{stored.dtype} of shape {list(stored.shape)}; the knowledge is corrupt"
            )
        return unpack_bits(stored, bits, self.k)

    def sparse(self, parts: Mapping[str, Value], field: FieldDesc) -> SparseTopK:
        """The parts as a :class:`SparseTopK` (int32 indices, float values, tail or None).

        Raises:
            KnowledgeError: missing parts, or an index outside ``[0, V)`` (corrupt parts: a
                negative index would otherwise land on position ``V - 1``).
        """
        vocab = int(field["shape"][-1])
        if vocab <= 0:
            raise KnowledgeError(f"top-k codec: the field's last axis must be known, got {field}")
        want = ["values", "indices"]
        want += ["scale"] if self.values_dtype == "uint8" else []
        want += ["tail"] if self.tail else []
        missing = [p for p in want if p not in parts]
        if missing:
            raise KnowledgeError(
                f"top-k codec: expected the parts {want}, got {sorted(parts)} (missing {missing})"
            )
        values, stored = parts["values"], parts["indices"]
        indices = same_rows(stored, in_vocab(self._indices(inner(stored), vocab), vocab))
        if self.values_dtype == "uint8":
            values = same_rows(values, dequantize(inner(values), inner(parts["scale"])))
        holds = self.holds if self.layout != 1 or self.log_softmax else None
        return SparseTopK(
            values,
            indices,
            vocab,
            parts["tail"] if self.tail else None,
            holds=holds,
            temperature=self.temperature,
        )

    def decode(self, parts: Mapping[str, Value], field: FieldDesc) -> Value:
        """The dense field ``[n, ..., V]`` in the field's original dtype (``fill`` outside the
        top-k, default ``-inf``)."""
        fill = float("-inf") if self.fill is None else self.fill
        return self.sparse(parts, field).dense(fill, to_dtype(field["dtype"]))

    def __repr__(self) -> str:
        return (
            f"TopK(k={self.k}, values_dtype={self.values_dtype!r}, holds={self.holds!r}, "
            f"temperature={self.temperature:g}, tail={self.tail}, layout={self.layout})"
        )


register_codec(TopK.name, TopK.from_spec)
