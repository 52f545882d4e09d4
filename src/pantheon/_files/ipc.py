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

__all__ = ["Direct", "Located", "batch_info", "direct_plan", "locate"]

_COMPRESSION_CODECS = {0: "lz4", 1: "zstd"}


def _u16(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", b, at)[0])


def _field_pos(b: bytes, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the flatbuffer table at ``table`` (None: absent)."""
    vtable = table - int(struct.unpack_from("<i", b, table)[0])
    slot = 4 + 2 * index
    if slot >= _u16(b, vtable):
        return None
    offset = _u16(b, vtable + slot)
    return table + offset if offset else None


def _batch_header(metadata: bytes) -> int:
    """Position of the RecordBatch table (``Message.header``) in a message's flatbuffer."""
    root = int(struct.unpack_from("<I", metadata, 0)[0])
    header_at = _field_pos(metadata, root, 2)
    if header_at is None:
        raise ValueError("a record batch message without a header")
    return header_at + int(struct.unpack_from("<I", metadata, header_at)[0])


def batch_info(metadata: bytes) -> tuple[int, str | None]:
    """Rows and compression (``"lz4"``, ``"zstd"`` or None) of a RecordBatch message.

    Parses the message's flatbuffer (``Message.header`` -> ``RecordBatch.length`` and
    ``RecordBatch.compression.codec``) without decoding the body.
    """
    header = _batch_header(metadata)
    length_at = _field_pos(metadata, header, 0)
    rows = int(struct.unpack_from("<q", metadata, length_at)[0]) if length_at else 0
    if rows < 0:
        raise ValueError(f"a record batch of {rows} rows")
    comp_at = _field_pos(metadata, header, 3)
    if comp_at is None:
        return rows, None
    comp = comp_at + int(struct.unpack_from("<I", metadata, comp_at)[0])
    codec_at = _field_pos(metadata, comp, 0)
    codec = metadata[codec_at] if codec_at is not None else 0
    return rows, _COMPRESSION_CODECS.get(codec, f"codec {codec}")


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
    vector = at + int(struct.unpack_from("<I", b, at)[0])
    count = int(struct.unpack_from("<I", b, vector)[0])
    if vector + 4 + 16 * count > len(b):
        raise ValueError("a field node or buffer vector past the end of the metadata")
    return struct.unpack_from(f"<{2 * count}q", b, vector + 4)


def locate(metadata: bytes, body_size: int, plan: list[Direct]) -> Located | None:
    """Where each planned column of a batch lies in its body; None unless it is plain.

    A plain batch is uncompressed, holds exactly the planned columns, no nulls, at least one
    value per column, and every values buffer lies inside the body. Other batches are left
    to pyarrow (which also reports what is wrong with a corrupt one).
    """
    header = _batch_header(metadata)
    if _field_pos(metadata, header, 3) is not None:  # compressed
        return None
    length_at = _field_pos(metadata, header, 0)
    rows = int(struct.unpack_from("<q", metadata, length_at)[0]) if length_at else 0
    nodes, buffers = _structs(metadata, header, 1), _structs(metadata, header, 2)
    last = plan[-1]
    if len(nodes) != 2 * (last.node + last.nodes) or len(buffers) != 2 * (last.buffer + 1):
        return None
    located: Located = []
    for d in plan:
        count = rows * d.width
        lengths = nodes[2 * d.node : 2 * (d.node + d.nodes)]
        if not count or lengths != ((rows, 0, count, 0) if d.nodes == 2 else (rows, 0)):
            return None
        at, size = buffers[2 * d.buffer], buffers[2 * d.buffer + 1]
        nbytes = count * d.dtype.itemsize
        if at < 0 or size < nbytes or at + nbytes > body_size:
            return None
        located.append((d.dtype, count, at, (rows, *d.inner)))
    return located
