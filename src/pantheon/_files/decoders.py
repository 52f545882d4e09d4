"""Decoding record batches of a knowledge file into numpy views, column by column.

Dense fields whose stored dtype is the description's dtype come back as read-only numpy
*views* of the mapped file (no copy); ragged fields as :class:`~pantheon.Ragged` views.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from .._knowledge import Ragged, Value
from .._knowledge import to_dtype as _to_dtype
from .layout import ColumnSpec

__all__ = ["Decoder", "decode_ids", "decoder", "empty"]

Decoder = Callable[[pa.Array], Value]


def empty(dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    out.flags.writeable = False
    return out


def _no_nulls(array: pa.Array) -> None:
    if array.null_count:
        raise ValueError(f"{array.null_count} null values; knowledge columns never hold nulls")


def _dense_decoder(col: ColumnSpec) -> Decoder:
    dtype = _to_dtype(col.dtype)  # bool and bfloat16 read their storage bytes directly
    item, inner, width = dtype.itemsize, col.inner, col.width
    if not inner:

        def decode_flat(array: pa.Array) -> Value:
            n = len(array)
            bufs = array.buffers()
            if bufs[0] is not None:
                _no_nulls(array)
            if n == 0:
                return empty(dtype, (0,))
            return np.frombuffer(bufs[1], dtype, n, array.offset * item)

        return decode_flat

    def decode_fixed(array: pa.Array) -> Value:
        n = len(array)
        bufs = array.buffers()
        if bufs[0] is not None or bufs[1] is not None:
            _no_nulls(array)
            _no_nulls(array.values)
        if n * width == 0:
            return empty(dtype, (n, *inner))
        start = array.offset * width + array.values.offset
        flat = np.frombuffer(bufs[2], dtype, n * width, start * item)
        return flat.reshape((n, *inner))

    return decode_fixed


def _ragged_decoder(col: ColumnSpec) -> Decoder:
    dtype = _to_dtype(col.dtype)
    item, inner, width = dtype.itemsize, col.inner, col.width

    def decode_ragged(array: pa.Array) -> Value:
        n = len(array)
        bufs = array.buffers()
        if any(b is not None for b in bufs[:1] + bufs[2:-1]):
            _no_nulls(array)
            _no_nulls(array.values)
        if n == 0:
            return Ragged(empty(dtype, (0, *inner)), np.zeros(0, np.int64))
        offsets = np.frombuffer(bufs[1], np.int64, n + 1, array.offset * 8)
        child = array.values
        rows = len(child)
        start = (child.values.offset + child.offset * width) if inner else child.offset
        if rows * width == 0 or bufs[-1] is None:
            values = empty(dtype, (rows, *inner))
        else:
            values = np.frombuffer(bufs[-1], dtype, rows * width, start * item)
            values = values.reshape((rows, *inner))
        return Ragged.from_offsets(values, offsets)  # within the child, never decreasing

    return decode_ragged


def decoder(col: ColumnSpec) -> Decoder:
    return _ragged_decoder(col) if col.lod_level else _dense_decoder(col)


def decode_ids(array: pa.Array) -> np.ndarray:
    n = len(array)
    if array.null_count:
        raise ValueError("null sample ids")
    if n == 0:
        return empty(np.dtype(np.int64), (0,))
    return np.frombuffer(array.buffers()[1], np.int64, n, array.offset * 8)
