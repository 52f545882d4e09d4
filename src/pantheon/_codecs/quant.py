"""8-bit quantization of each position's values (the last axis), relative to its maximum.

For a position with values ``v_0, ..., v_{k-1}`` (top-k logits or log-probabilities, sorted or
not):

* ``m = float16(max_j v_j)``, the maximum (0 when every entry is ``-inf``);
* ``s``: the step, ``(m - v_min) / 254`` rounded *up* to a float16, where ``v_min`` is the
  smallest finite kept value (0 when all finite entries are equal);
* code ``c_j = clip(round((m - v_j) / s), 0, 254)`` for finite ``v_j``, ``255`` for ``-inf``.

Stored: the codes ``uint8 [..., k]`` and ``(m, s)`` as ``float16 [..., 2]``: ``k + 4`` bytes
per position. Decoded: ``m - c_j * s`` in float32 (``-inf`` for code 255).

**Error bound** (tested): for every finite entry
``|decoded - v| <= s / 2 + 2**-11 * |max|`` (half a step, plus the float16 rounding of the
maximum, which only the entries above ``m`` see), up to float32 rounding
(``~1e-7 * |v|``). With log-probabilities of a top-20 spanning 10 nats, ``s ~ 0.04`` and the
error is below 0.02 nats (2 % in probability).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .._errors import ConfigError, KnowledgeError
from .._knowledge import FieldDesc, Value, to_dtype
from .base import FLOAT_DTYPES, Codec, register_codec
from .sparse import inner, same_rows

__all__ = ["NEG_INF_CODE", "Quant8", "dequantize", "error_bound", "quantize"]

NEG_INF_CODE = 255
"""The code of an entry of ``-inf`` (a probability of 0)."""
_STEPS = 254


def quantize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``uint8 [..., k]`` and ``(max, step)`` ``float16 [..., 2]`` of the rows.

    Args:
        values: float ``[..., k]`` (finite or ``-inf``).

    Raises:
        KnowledgeError: NaN or ``+inf`` among the values, or a row spanning more than float16
            can hold as a step (over ``254 * 65504``).
    """
    v = np.asarray(values, dtype=np.float32)
    if v.size and not (np.isfinite(v) | (v == -np.inf)).all():
        raise KnowledgeError(
            "8-bit top-k values: found NaN or +inf among the kept values; only finite values "
            "and -inf can be quantized (check the teacher's logits)"
        )
    finite = np.isfinite(v)
    if not v.shape[-1]:
        return np.zeros(v.shape, np.uint8), np.zeros((*v.shape[:-1], 2), np.float16)
    high = np.max(np.where(finite, v, -np.inf), axis=-1)
    top = np.where(np.isfinite(high), high, 0).astype(np.float16)
    m = top.astype(np.float32)
    low = np.min(np.where(finite, v, np.inf), axis=-1)
    low = np.where(np.isfinite(low), low, m)
    step32 = np.maximum(m - low, 0) / np.float32(_STEPS)
    step = step32.astype(np.float16)
    short = step.astype(np.float32) < step32
    step[short] = np.nextafter(step[short], np.float16(np.inf))
    if not np.isfinite(step).all():
        raise KnowledgeError(
            "8-bit top-k values: a position's kept values span more than a float16 step can "
            f"cover (over {_STEPS} * 65504); store such knowledge with float values"
        )
    s = step.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(s > 0, (m[..., None] - v) / s, 0)
    codes = np.where(finite, np.clip(np.rint(raw), 0, _STEPS), NEG_INF_CODE).astype(np.uint8)
    return codes, np.stack([top, step], axis=-1)


def dequantize(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    """float32 ``[..., k]`` values of :func:`quantize`'s output.

    Raises:
        KnowledgeError: the parts' shapes disagree (corrupt knowledge).
    """
    if params.shape != (*codes.shape[:-1], 2) or codes.dtype != np.uint8:
        raise KnowledgeError(
            f"8-bit top-k values: expected uint8 codes [..., k] and float16 (max, step) "
            f"[..., 2], got {codes.dtype} {list(codes.shape)} and {params.dtype} "
            f"{list(params.shape)}; the knowledge is corrupt"
        )
    p = params.astype(np.float32)
    out = p[..., :1] - codes.astype(np.float32) * p[..., 1:]
    out[codes == NEG_INF_CODE] = -np.inf
    return out


def error_bound(params: np.ndarray) -> np.ndarray:
    """The documented bound per position, ``s / 2 + 2**-11 * |max|`` (float32 ``[...]``),
    from the stored ``(max, step)`` (the stored max is within that rounding of the true one)."""
    p = params.astype(np.float32)
    bound: np.ndarray = p[..., 1] / 2 + np.float32(2.0**-11 * (1 + 2.0**-10)) * np.abs(p[..., 0])
    return bound


class Quant8:
    """Store a float field as 8-bit codes relative to each position's maximum (above).

    For knowledge already cut to a few entries per position, such as the top-k
    log-probabilities ``pantheon.hf.causal_lm_topk_program`` outputs: a field ``[n, ..., k]``
    (or ragged ``[n, -1, k]``) is stored as ``"codes"`` ``uint8 [n, ..., k]`` and ``"scale"``
    ``float16 [n, ..., 2]``, ``k + 4`` bytes per position, and decoded to the field's dtype
    within ``step / 2 + 2**-11 * |max|`` (:func:`error_bound`). Registered as ``"quant8"``.
    """

    name: ClassVar[str] = "quant8"

    def spec(self) -> dict[str, Any]:
        """``{"name": "quant8", "version": 1}``."""
        return {"name": self.name, "version": 1}

    def check(self, key: str, field: FieldDesc) -> None:
        """Raise :class:`~pantheon.ConfigError` unless ``field`` holds floats with a last axis."""
        shape = list(field.get("shape", []))
        if field.get("dtype") not in FLOAT_DTYPES or len(shape) < (
            3 if field.get("lod_level", 0) else 2
        ):
            raise ConfigError(
                f"cannot store knowledge {key!r} ({field.get('dtype')}, shape {shape}) with "
                "Quant8: it applies to float fields with a last axis ([-1, ..., k] or ragged "
                "[-1, -1, k])"
            )

    def encode(self, value: Value) -> dict[str, Value]:
        """``{"codes", "scale"}``.

        Raises:
            KnowledgeError: NaN or ``+inf`` values, or no last axis.
        """
        arr = inner(value)
        if arr.ndim < 2:
            raise KnowledgeError(f"quant8: expected a last axis, got shape {list(arr.shape)}")
        codes, scale = quantize(arr)
        return {"codes": same_rows(value, codes), "scale": same_rows(value, scale)}

    def decode(self, parts: dict[str, Value], field: FieldDesc) -> Value:
        """The values in the field's dtype (``-inf`` kept)."""
        if "codes" not in parts or "scale" not in parts:
            raise KnowledgeError(f"quant8: expected the parts codes and scale, got {sorted(parts)}")
        codes = parts["codes"]
        out = dequantize(inner(codes), inner(parts["scale"]))
        return same_rows(codes, out.astype(to_dtype(field["dtype"])))

    def __repr__(self) -> str:
        return "Quant8()"


def _quant8_from_spec(spec: Mapping[str, Any]) -> Codec:
    if dict(spec) not in ({"name": "quant8"}, {"name": "quant8", "version": 1}):
        raise ConfigError(f"the quant8 codec (version 1) takes no parameters, got {dict(spec)!r}")
    return Quant8()


register_codec(Quant8.name, _quant8_from_spec)
