"""Knowledge files taken apart and put back together, for crafting and mutating them, and
the reference reading that every Pantheon read of a mutated file must agree with.

A file is walked message by message (``docs/format.md``); for a record batch message the
absolute positions of its flatbuffer fields (rows, body length, field nodes, buffers) are
found, so that a test can overwrite one of them, or rebuild the body with other buffers.
:func:`check_read` is the oracle: a Pantheon read ends in values equal to pyarrow's own
reading of the same bytes (its full validation passed, ``pyarrow.ipc.read_record_batch``
decoded) or in a ``FileFormatError`` that names the file, never another exception, never
values that differ.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pantheon import FileFormatError, KnowledgeFile, Ragged, SparseTopK
from pantheon._codecs import decode_batch
from pantheon._files import Layout, parse_layout
from pantheon._files.ipc import _batch_header, _field_pos
from pantheon._knowledge import Chunk, to_dtype

_CONTINUATION = 0xFFFFFFFF


@dataclass(frozen=True)
class Message:
    """One encapsulated message of a file: where its metadata and body lie (absolute)."""

    start: int
    meta: int
    meta_len: int
    body: int
    body_len: int


def messages(data: bytes) -> list[Message]:
    """The complete messages of an IPC file (schema first), as far as they can be walked."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        marker, size = struct.unpack_from("<Ii", data, pos)
        if marker != _CONTINUATION or size <= 0 or pos + 8 + size > len(data):
            break
        meta = data[pos + 8 : pos + 8 + size]
        at = _field_pos(meta, struct.unpack_from("<I", meta, 0)[0], 3)
        body_len = struct.unpack_from("<q", meta, at)[0] if at else 0
        out.append(Message(pos, pos + 8, size, pos + 8 + size, body_len))
        pos += 8 + size + body_len
    return out


def batch_fields(data: bytes, msg: Message) -> dict[str, int]:
    """Absolute positions of the int64 fields of a record batch message: ``rows``,
    ``body_length``, ``node{i}.length``, ``node{i}.nulls``, ``buffer{i}.offset`` and
    ``buffer{i}.length``."""
    meta = data[msg.meta : msg.meta + msg.meta_len]
    root = struct.unpack_from("<I", meta, 0)[0]
    header = _batch_header(meta)
    out = {"body_length": _field_pos(meta, root, 3), "rows": _field_pos(meta, header, 0)}
    for index, (kind, names) in enumerate(
        [("node", ("length", "nulls")), ("buffer", ("offset", "length"))], start=1
    ):
        at = _field_pos(meta, header, index)
        vector = at + struct.unpack_from("<I", meta, at)[0]
        for i in range(struct.unpack_from("<I", meta, vector)[0]):
            for j, name in enumerate(names):
                out[f"{kind}{i}.{name}"] = vector + 4 + 16 * i + 8 * j
    return {k: msg.meta + v for k, v in out.items() if v is not None}


def buffers(data: bytes, msg: Message) -> list[tuple[int, int]]:
    """``(absolute offset, length)`` of every buffer of a record batch message's body."""
    fields = batch_fields(data, msg)
    out = []
    for i in range(sum(k.startswith("buffer") for k in fields) // 2):
        at, size = (read_i64(data, fields[f"buffer{i}.{n}"]) for n in ("offset", "length"))
        out.append((msg.body + at, size))
    return out


def read_i64(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<q", data, at)[0])


def write_i64(data: bytearray, at: int, value: int) -> None:
    struct.pack_into("<q", data, at, value)


def replace_buffers(data: bytes, batch: int, new: dict[int, bytes]) -> bytes:
    """The file with record batch ``batch`` (0-based) rebuilt: buffer ``i`` becomes
    ``new[i]`` (raw body bytes), the others kept, all re-laid at 8-byte aligned offsets, its
    metadata updated; the batches after it are dropped (the file then ends as if cut)."""
    msg = messages(data)[1 + batch]
    fields = batch_fields(data, msg)
    meta = bytearray(data[msg.meta : msg.meta + msg.meta_len])
    body = bytearray()
    for i, (at, size) in enumerate(buffers(data, msg)):
        chunk = new.get(i, data[at : at + size])
        write_i64(meta, fields[f"buffer{i}.offset"] - msg.meta, len(body))
        write_i64(meta, fields[f"buffer{i}.length"] - msg.meta, len(chunk))
        body += chunk + bytes(-len(chunk) % 8)
    write_i64(meta, fields["body_length"] - msg.meta, len(body))
    return data[: msg.start] + struct.pack("<Ii", _CONTINUATION, len(meta)) + meta + body


# --------------------------------------------------------------------------- the oracle


def reference_chunk(batch: pa.RecordBatch, layout: Layout, *, sparse: bool = False) -> Chunk:
    """pyarrow's own reading of a batch (after its full validation), through the codecs."""
    batch.validate(full=True)
    if any(column.null_count for column in batch.columns):
        raise ValueError("null values")
    parts: dict[tuple[str, str], Any] = {}
    for i, (key, col) in enumerate(layout.columns, 1):
        array, dtype, inner = batch.column(i), to_dtype(col.dtype), col.inner
        outer = array.flatten() if col.lod_level else array  # one entry per sample or token
        flat = outer.flatten() if inner else outer
        if outer.null_count or flat.null_count:
            raise ValueError("null values")
        values = flat.to_numpy(zero_copy_only=False).view(dtype).reshape(len(outer), *inner)
        if col.lod_level:
            parts[(key, col.part)] = Ragged(values, np.diff(array.offsets.to_numpy()))
        else:
            parts[(key, col.part)] = values.reshape(len(array), *inner)
    ids = batch.column(0).to_numpy()
    return Chunk(ids, decode_batch(parts, layout.desc, layout.codecs, sparse=sparse))


def reference_batches(data: bytes) -> tuple[Layout, list[pa.ipc.Message]]:
    """The layout and the record batch messages that pyarrow finds in a file's stream."""
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(pa.py_buffer(data[8:])))
    schema = pa.ipc.read_schema(reader.read_next_message())
    found = []
    while True:
        try:
            msg = reader.read_next_message()
        except (StopIteration, pa.ArrowException, OSError, ValueError):
            break
        if msg.type != "record batch":
            break
        found.append(msg)
    return parse_layout(Path("reference"), schema), found


def same_value(got: Any, want: Any) -> bool:
    """Exactly the same field: kind, dtype, shape, bytes (and lengths, and top-k parts)."""
    if isinstance(want, SparseTopK):
        return (
            isinstance(got, SparseTopK)
            and got.vocab_size == want.vocab_size
            and same_value(got.values, want.values)
            and same_value(got.indices, want.indices)
        )
    if isinstance(want, Ragged):
        return (
            isinstance(got, Ragged)
            and np.array_equal(got.lengths, want.lengths)
            and same_value(got.values, want.values)
        )
    return (
        isinstance(got, np.ndarray)
        and got.dtype == want.dtype
        and got.shape == want.shape
        and np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()
    )


def check_read(path: Path, *, sparse_topk: bool = False) -> str:
    """Read the file at ``path`` with Pantheon and hold it to pyarrow's reading (see the
    module docstring). Returns ``"read"`` or ``"refused"``."""
    data = path.read_bytes()
    got: list[tuple[int, Chunk]] = []
    outcome = "read"
    try:
        with KnowledgeFile(path, sparse_topk=sparse_topk) as kf:
            nonempty = [b for b, n in enumerate(kf.batch_sizes()) if n]
            for b, chunk in zip(nonempty, kf.iter_chunks(), strict=False):
                got.append((b, chunk))
    except FileFormatError as exc:
        outcome = f"refused: {exc}"
    assert outcome == "read" or str(path) in outcome, f"the error does not name the file: {outcome}"
    outcome = outcome.split(":")[0]
    if not got:
        return outcome
    layout, found = reference_batches(data)
    for b, chunk in got:
        try:
            batch = pa.ipc.read_record_batch(found[b], _schema(data))
            want = reference_chunk(batch, layout, sparse=sparse_topk)
        except Exception as exc:
            raise AssertionError(f"batch {b} was read, but pyarrow refuses it: {exc!r}") from exc
        assert np.array_equal(chunk.ids, want.ids), f"batch {b}: other sample ids"
        assert list(chunk.data) == list(want.data)
        for key, value in want.data.items():
            assert same_value(chunk.data[key], value), f"batch {b}: {key!r} differs from pyarrow"
    return outcome


def _schema(data: bytes) -> pa.Schema:
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(pa.py_buffer(data[8:])))
    return pa.ipc.read_schema(reader.read_next_message())
