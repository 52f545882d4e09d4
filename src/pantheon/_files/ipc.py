"""Arrow IPC messages read by hand: record batch headers (flatbuffers) and where a plain
batch keeps its buffers, so that the reader can view them without building pyarrow arrays.

Only what the knowledge reader needs is decoded: a ``RecordBatch`` message's row count,
compression, field nodes and buffers (see the Arrow format's ``Message.fbs``/``Schema.fbs``).
Anything unexpected makes these helpers return ``None`` or raise ``ValueError``/``struct.error``,
and the reader falls back to pyarrow.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

from .._knowledge import to_dtype as _to_dtype
from .layout import Layout

__all__ = [
    "Direct",
    "Located",
    "batch_info",
    "compressed_buffers",
    "direct_plan",
    "locate",
    "sound_buffers",
]

_COMPRESSION_CODECS = {0: "lz4", 1: "zstd"}
_ALIGN = 8  # Arrow IPC: every buffer of a body starts at a multiple of 8 bytes


def _scalar(fmt: str, b: bytes, at: int) -> int:
    """The little-endian scalar ``fmt`` at ``at``; positions outside ``b`` raise ValueError
    (``struct`` would read a negative position from the end)."""
    if at < 0:
        raise ValueError(f"a flatbuffer position {at} before the start of the metadata")
    return int(struct.unpack_from(fmt, b, at)[0])  # struct.error past the end


def _u16(b: bytes, at: int) -> int:
    return _scalar("<H", b, at)


def _field_pos(b: bytes, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the flatbuffer table at ``table`` (None: absent)."""
    vtable = table - _scalar("<i", b, table)
    slot = 4 + 2 * index
    if slot >= _u16(b, vtable):
        return None
    offset = _u16(b, vtable + slot)
    return table + offset if offset else None


def _batch_header(metadata: bytes) -> int:
    """Position of the RecordBatch table (``Message.header``) in a message's flatbuffer."""
    root = _scalar("<I", metadata, 0)
    header_at = _field_pos(metadata, root, 2)
    if header_at is None:
        raise ValueError("a record batch message without a header")
    return header_at + _scalar("<I", metadata, header_at)


def batch_rows(metadata: bytes, header: int) -> int:
    """``RecordBatch.length`` of the RecordBatch table at ``header`` (0 when absent)."""
    length_at = _field_pos(metadata, header, 0)
    return _scalar("<q", metadata, length_at) if length_at else 0


def batch_info(metadata: bytes) -> tuple[int, str | None]:
    """Rows and compression (``"lz4"``, ``"zstd"`` or None) of a RecordBatch message.

    Parses the message's flatbuffer (``Message.header`` -> ``RecordBatch.length`` and
    ``RecordBatch.compression.codec``) without decoding the body.
    """
    header = _batch_header(metadata)
    rows = batch_rows(metadata, header)
    if rows < 0:
        raise ValueError(f"a record batch of {rows} rows")
    comp_at = _field_pos(metadata, header, 3)
    if comp_at is None:
        return rows, None
    comp = comp_at + _scalar("<I", metadata, comp_at)
    codec_at = _field_pos(metadata, comp, 0)
    codec = _scalar("<b", metadata, codec_at) if codec_at is not None else 0
    return rows, _COMPRESSION_CODECS.get(codec, f"codec {codec}")


def compressed_buffers(metadata: bytes) -> tuple[int, str, tuple[int, ...]] | None:
    """Rows, codec and buffers (``offset, length`` flattened) of a compressed RecordBatch
    message; None when it is not compressed."""
    header = _batch_header(metadata)
    if _field_pos(metadata, header, 3) is None:
        return None
    rows, codec = batch_info(metadata)
    return rows, codec or "", _structs(metadata, header, 2)


# --------------------------------------------------------------------------- direct reads


class Direct(NamedTuple):
    """Where one dense column of a plain record batch keeps its values."""

    node: int  # index of the column's first field node
    nodes: int  # 1 (a primitive column) or 2 (a fixed-size list and its values)
    buffer: int  # index of the values buffer
    dtype: np.dtype[Any]
    width: int  # values per sample
    inner: tuple[int, ...]


Located = list[tuple[np.dtype[Any], int, int, tuple[int, ...]]]  # (dtype, count, offset, shape)


def direct_plan(layout: Layout) -> list[Direct] | None:
    """The sample ids then every stored column, in schema order; None with a ragged column."""
    plan = [Direct(0, 1, 1, np.dtype(np.int64), 1, ())]
    node, buffer = 1, 2  # the ids column holds one node and two buffers (validity, values)
    for _, col in layout.columns:
        if col.lod_level:
            return None
        nodes = 2 if col.inner else 1
        plan.append(Direct(node, nodes, buffer + nodes, _to_dtype(col.dtype), col.width, col.inner))
        node, buffer = node + nodes, buffer + nodes + 1
    return plan


def _structs(b: bytes, table: int, index: int) -> tuple[int, ...]:
    """Vector field ``index`` of 16-byte structs of two int64 (FieldNode, Buffer), flattened."""
    at = _field_pos(b, table, index)
    if at is None:
        return ()
    vector = at + _scalar("<I", b, at)
    count = _scalar("<I", b, vector)
    if vector + 4 + 16 * count > len(b):
        raise ValueError("a field node or buffer vector past the end of the metadata")
    return struct.unpack_from(f"<{2 * count}q", b, vector + 4)


def sound_buffers(buffers: tuple[int, ...], body_size: int) -> bool:
    """Whether every ``(offset, length)`` buffer lies inside a body of ``body_size`` bytes and
    every non-empty one starts at a multiple of 8, as the Arrow format requires (pyarrow
    refuses unaligned buffers too). O(number of buffers)."""
    for i in range(0, len(buffers), 2):
        at, size = buffers[i], buffers[i + 1]
        if at < 0 or size < 0 or at + size > body_size or (size and at % _ALIGN):
            return False
    return True


def locate(metadata: bytes, body_size: int, plan: list[Direct]) -> Located | None:
    """Where each planned column of a batch lies in its body; None unless it is plain.

    A plain batch is uncompressed and holds exactly the planned columns: one field node per
    array with the batch's length (times the width for a fixed-size list's child) and no
    nulls, every buffer sound (:func:`sound_buffers`), every validity buffer empty and every
    values buffer exactly ``rows x width x itemsize`` bytes. O(number of buffers). Other
    batches are left to pyarrow, whose validation reports what is wrong with a corrupt one
    (or reads a valid but unusual one, e.g. with oversized buffers).
    """
    header = _batch_header(metadata)
    if _field_pos(metadata, header, 3) is not None:  # compressed
        return None
    rows = batch_rows(metadata, header)
    nodes, buffers = _structs(metadata, header, 1), _structs(metadata, header, 2)
    last = plan[-1]
    if rows <= 0 or len(nodes) != 2 * (last.node + last.nodes):
        return None
    if len(buffers) != 2 * (last.buffer + 1) or not sound_buffers(buffers, body_size):
        return None
    located: Located = []
    for d in plan:
        count = rows * d.width
        lengths = nodes[2 * d.node : 2 * (d.node + d.nodes)]
        if not count or lengths != ((rows, 0, count, 0) if d.nodes == 2 else (rows, 0)):
            return None
        validity = buffers[2 * (d.buffer - d.nodes) + 1 : 2 * d.buffer : 2]
        at, size = buffers[2 * d.buffer], buffers[2 * d.buffer + 1]
        if any(validity) or size != count * d.dtype.itemsize:
            return None
        located.append((d.dtype, count, at, (rows, *d.inner)))
    return located
