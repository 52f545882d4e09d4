"""Bit-packing of small unsigned integers: ``b`` bits each (1 <= b <= 32), little-endian.

:func:`pack_bits` packs the last axis of an integer array of shape ``[..., m]`` into bytes,
``[..., ceil(m * b / 8)]`` ``uint8``; :func:`unpack_bits` is its inverse. Every row (one
position's ``m`` values) is packed on its own, so rows stay separately addressable (a ragged
field's tokens, a file's samples).

Layout of one row (``docs/format.md``, "Bit-packed integers"): the row is a stream of
``m * b`` bits; value ``j``'s bit ``i`` (its weight ``2**i``) is bit ``p = j * b + i`` of the
stream, stored in byte ``p // 8`` at bit ``p % 8`` (weight ``2**(p % 8)``). The unused high
bits of the last byte are 0. For ``b = 8``, ``16`` or ``32`` this is exactly the
little-endian ``uint8``/``uint16``/``uint32`` array.

Both directions are vectorised: values are handled in groups of eight (``8 * b`` bits are
exactly ``b`` bytes), each of the eight lanes is shifted into a 64-bit word and spread over
the at most five bytes it touches. :func:`bits_for` gives the width of a vocabulary's indices:
``ceil(log2(V))`` bits (17 for 100,000 tokens, 18 for 151,936).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import KnowledgeError

__all__ = ["MAX_BITS", "bits_for", "pack_bits", "packed_size", "unpack_bits"]

MAX_BITS = 32
"""The widest packed integers (indices of vocabularies up to ``2**32`` entries)."""


def bits_for(size: int) -> int:
    """Bits needed for integers in ``[0, size)``: ``ceil(log2(size))``, at least 1.

    Raises:
        KnowledgeError: ``size`` < 1 or above ``2**32``.
    """
    if size < 1 or size > 1 << MAX_BITS:
        raise KnowledgeError(
            f"bit-packing: expected a range of 1 to 2**{MAX_BITS} values, got {size}"
        )
    return max(1, (int(size) - 1).bit_length())


def packed_size(count: int, bits: int) -> int:
    """Bytes of a row of ``count`` values at ``bits`` bits: ``ceil(count * bits / 8)``."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise KnowledgeError(
            f"bit-packing: the width must be an int in [1, {MAX_BITS}], got {bits!r}"
        )


def _lanes(bits: int) -> list[tuple[int, int, int]]:
    """Per lane ``j`` of a group of eight: (first byte, shift in it, bytes touched)."""
    out = []
    for j in range(8):
        start, shift = divmod(j * bits, 8)
        out.append((start, shift, (shift + bits + 7) // 8))
    return out


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of ``values`` at ``bits`` bits per value (see the module docstring).

    Args:
        values: integers ``[..., m]`` in ``[0, 2**bits)`` (any integer dtype).
        bits: the width, 1 to 32.

    Returns:
        ``uint8`` ``[..., ceil(m * bits / 8)]``.

    Raises:
        KnowledgeError: a value outside ``[0, 2**bits)`` (naming it), or not integers.
    """
    _check_bits(bits)
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise KnowledgeError(f"bit-packing: expected integers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise KnowledgeError(
            "bit-packing: expected an array with a last axis to pack, got a scalar"
        )
    if arr.size:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= 1 << bits:
            bad = low if low < 0 else high
            raise KnowledgeError(
                f"bit-packing: the value {bad} does not fit in {bits} bits (expected integers in "
                f"[0, {1 << bits})); a wider field needs a wider packing"
            )
    lead, m = arr.shape[:-1], arr.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    groups = (m + 7) // 8
    padded = np.zeros((rows, groups * 8), dtype=np.uint64)
    padded[:, :m] = arr.reshape(rows, m)
    lanes = padded.reshape(rows * groups, 8)
    out = np.zeros((rows * groups, bits), dtype=np.uint8)  # 8 values: exactly `bits` bytes
    byte = np.uint64(0xFF)
    for j, (start, shift, touched) in enumerate(_lanes(bits)):
        word = lanes[:, j] << np.uint64(shift)
        for t in range(touched):
            out[:, start + t] |= ((word >> np.uint64(8 * t)) & byte).astype(np.uint8)
    nbytes = packed_size(m, bits)
    return np.ascontiguousarray(out.reshape(rows, groups * bits)[:, :nbytes]).reshape(
        (*lead, nbytes)
    )


def unpack_bits(data: np.ndarray, bits: int, count: int, dtype: Any = np.int32) -> np.ndarray:
    """The ``count`` values of each row of :func:`pack_bits`'s output.

    Args:
        data: ``uint8`` ``[..., ceil(count * bits / 8)]``.
        bits: the width they were packed at, 1 to 32.
        count: values per row.
        dtype: the output integer dtype (default int32; give int64 or uint32 for 32 bits).

    Returns:
        ``[..., count]`` in ``dtype``.

    Raises:
        KnowledgeError: ``data`` is not ``uint8`` or its last axis is not
            ``ceil(count * bits / 8)`` bytes.
    """
    _check_bits(bits)
    arr = np.asarray(data)
    nbytes = packed_size(count, bits)
    if arr.dtype != np.uint8 or arr.ndim == 0 or arr.shape[-1] != nbytes:
        raise KnowledgeError(
            f"bit-packing: expected uint8 rows of {nbytes} bytes ({count} values at {bits} bits), "
            f"got {arr.dtype} of shape {list(arr.shape)}"
        )
    lead = arr.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    groups = (count + 7) // 8
    buf = np.zeros((rows, groups * bits), dtype=np.uint8)
    buf[:, :nbytes] = arr.reshape(rows, nbytes)
    grouped = buf.reshape(rows * groups, bits)  # group g of a row: bytes g * bits onwards
    out = np.empty((rows * groups, 8), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for j, (start, shift, touched) in enumerate(_lanes(bits)):
        word = grouped[:, start].astype(np.uint64)
        for t in range(1, touched):
            word |= grouped[:, start + t].astype(np.uint64) << np.uint64(8 * t)
        out[:, j] = (word >> np.uint64(shift)) & mask
    return out.reshape(rows, groups * 8)[:, :count].astype(dtype).reshape((*lead, count))
