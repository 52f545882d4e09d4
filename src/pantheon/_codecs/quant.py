"""8-bit quantization of the sorted top-k values of each position, relative to its maximum.

For a position with kept values ``v_0 >= v_1 >= ... >= v_{k-1}`` (logits or log-probabilities):

* ``m = float16(v_0)``, the maximum (0 when every entry is ``-inf``);
* ``s``: the step, ``(m - v_min) / 254`` rounded *up* to a float16, where ``v_min`` is the
  smallest finite kept value (0 when all finite entries are equal);
* code ``c_j = clip(round((m - v_j) / s), 0, 254)`` for finite ``v_j``, ``255`` for ``-inf``.

Stored: the codes ``uint8 [..., k]`` and ``(m, s)`` as ``float16 [..., 2]``: ``k + 4`` bytes
per position. Decoded: ``m - c_j * s`` in float32 (``-inf`` for code 255).

**Error bound** (tested): for every finite entry
``|decoded - v| <= s / 2 + 2**-11 * |v_0|`` (half a step, plus the float16 rounding of the
maximum, which only the entries above ``m`` see), up to float32 rounding
(``~1e-7 * |v|``). With log-probabilities of a top-20 spanning 10 nats, ``s ~ 0.04`` and the
error is below 0.02 nats (2 % in probability).
"""

from __future__ import annotations

import numpy as np

from .._errors import KnowledgeError

__all__ = ["NEG_INF_CODE", "dequantize", "error_bound", "quantize"]

NEG_INF_CODE = 255
"""The code of an entry of ``-inf`` (a probability of 0)."""
_STEPS = 254


def quantize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``uint8 [..., k]`` and ``(max, step)`` ``float16 [..., 2]`` of sorted rows.

    Args:
        values: float ``[..., k]``, each row sorted decreasingly (as top-k selects them).

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
    top = np.where(finite[..., 0], v[..., 0], 0).astype(np.float16) if v.shape[-1] else None
    if top is None:
        return np.zeros(v.shape, np.uint8), np.zeros((*v.shape[:-1], 2), np.float16)
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
