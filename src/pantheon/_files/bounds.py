"""Caps on what a compressed record batch may decompress to, worked out from the layout.

In a compressed Arrow IPC body every buffer starts with an int64: the length it claims to
decompress to (``-1``: stored as it is). pyarrow allocates that many bytes before it looks at
the data, so a few hundred kilobytes of hostile file could ask for gigabytes. Before a
compressed batch is handed to pyarrow, :func:`check_compressed` compares every claim with
what the file's layout allows for the batch's rows: a column of ``rows x width`` values of
``itemsize`` bytes needs that many bytes, a validity bitmap one bit per value, a ragged
column's offsets ``8 x (rows + 1)`` bytes, and its values what its last offset says (read
from the offsets buffer, itself capped first). Claims are rounded up to 64 bytes (Arrow's
padding). O(number of buffers), plus decompressing each ragged column's offsets.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .._errors import FileFormatError, KnowledgeError
from .._knowledge import to_dtype as _to_dtype
from .._util import lengths_of_offsets
from .ipc import compressed_buffers, sound_buffers
from .layout import Layout

__all__ = ["BufferBound", "buffer_bounds", "check_compressed"]

_PAD = 64  # Arrow pads buffers to 64 bytes: a claim may round up to it
_NO_ROWS_LIMIT = 2**62


class BufferBound(NamedTuple):
    """What one buffer of a batch holds, to bound its size.

    ``basis`` is ``"rows"`` (the batch's rows), ``"offsets"`` (rows + 1) or ``"tokens"``
    (the rows of the ragged column ``ragged``, from its offsets); the buffer holds
    ``basis x width`` elements of ``itemsize`` bytes (0: bits of a validity bitmap).
    """

    what: str
    basis: str
    width: int
    itemsize: int
    ragged: int

    def allowed(self, rows: int, tokens: dict[int, int]) -> int:
        """The most bytes this buffer may hold for a batch of ``rows`` rows."""
        if self.basis == "offsets":
            n = rows + 1
        else:
            n = rows if self.basis == "rows" else tokens.get(self.ragged, 0)
        n *= self.width
        need = -(-n // 8) if self.itemsize == 0 else n * self.itemsize
        return -(-need // _PAD) * _PAD


def buffer_bounds(layout: Layout) -> list[BufferBound]:
    """The buffers of one record batch of ``layout``, in body order (the ids column first)."""
    out = [
        BufferBound("the validity of the sample ids", "rows", 1, 0, -1),
        BufferBound("the sample ids", "rows", 1, 8, -1),
    ]
    for i, (_, col) in enumerate(layout.columns):
        name = f"column {col.name!r}"
        item = _to_dtype(col.dtype).itemsize
        basis = "rows"
        out.append(BufferBound(f"the validity of {name}", "rows", 1, 0, i))
        if col.lod_level:
            out.append(BufferBound(f"the offsets of {name}", "offsets", 1, 8, i))
            out.append(BufferBound(f"the validity of the values of {name}", "tokens", 1, 0, i))
            basis = "tokens"
        if col.inner:
            out.append(BufferBound(f"the validity of the items of {name}", basis, col.width, 0, i))
        out.append(BufferBound(f"the values of {name}", basis, col.width, item, i))
    return out


def _corrupt(path: Path, index: int, what: str) -> FileFormatError:
    return FileFormatError(
        f"{path}: batch {index} is corrupt: {what}; the file is damaged or was not written "
        "by Pantheon, dump the knowledge again"
    )


def check_compressed(
    path: Path, index: int, message: pa.ipc.Message, bounds: list[BufferBound]
) -> None:
    """Refuse a compressed batch whose buffers claim more than the layout allows.

    Uncompressed batches pass at once (their buffers are slices of the mapped file).

    Raises:
        FileFormatError: naming the file, the batch, the buffer, the claimed and the allowed
            sizes; or a batch whose buffers do not match the layout or lie outside its body.
    """
    found = compressed_buffers(message.metadata.to_pybytes())
    if found is None:
        return
    rows, codec, buffers = found
    body = message.body
    if len(buffers) != 2 * len(bounds) or not sound_buffers(buffers, body.size):
        raise _corrupt(
            path,
            index,
            f"its {len(buffers) // 2} buffers do not fit its layout ({len(bounds)} buffers) "
            f"or its {body.size}-byte body",
        )
    tokens: dict[int, int] = {}
    view = memoryview(body)
    for i, bound in enumerate(bounds):
        at, size = buffers[2 * i], buffers[2 * i + 1]
        if size == 0:
            continue
        if size < 8:
            raise _corrupt(path, index, f"buffer {i} ({bound.what}) is {size} bytes, under 8")
        claimed = int(struct.unpack_from("<q", view, at)[0])
        allowed = bound.allowed(rows, tokens)
        if claimed < -1 or claimed > allowed:
            counted = f" ({tokens.get(bound.ragged, 0)} rows of values by its offsets)"
            raise FileFormatError(
                f"{path}: batch {index}: buffer {i} ({bound.what}) claims to decompress to "
                f"{claimed} bytes, but {rows} rows{counted if bound.basis == 'tokens' else ''} "
                f"allow at most {allowed}; the file is corrupt or hostile, dump the knowledge "
                "again"
            )
        if bound.basis == "offsets":
            raw = body.slice(at + 8, size - 8)
            data = raw if claimed == -1 else pa.Codec(codec).decompress(raw, claimed)
            tokens[bound.ragged] = _last_offset(path, index, data, rows)


def _last_offset(path: Path, index: int, data: pa.Buffer, rows: int) -> int:
    """The end of the last sample that a ragged column's offsets buffer gives."""
    if data.size < 8 * (rows + 1):
        raise _corrupt(path, index, f"an offsets buffer of {data.size} bytes for {rows} rows")
    offsets = np.frombuffer(data, np.int64, rows + 1)
    try:
        lengths_of_offsets(offsets, _NO_ROWS_LIMIT)
    except KnowledgeError as exc:
        raise _corrupt(path, index, str(exc)) from None
    return int(offsets[-1])
