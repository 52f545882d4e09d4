"""Reading knowledge files: :class:`KnowledgeFile`.

A knowledge file is an Arrow IPC *file* (see ``docs/format.md``): the 8-byte magic
``ARROW1\\0\\0``, a stream of encapsulated messages (one schema, then one record batch per
dumped batch) and a footer. Pantheon reads the message stream itself, memory-mapped, and
only checks the footer: a file whose footer is missing (its writer was killed) is read up to
its last complete batch. Dense fields whose stored dtype is the description's dtype come
back as read-only numpy *views* of the mapped file (no copy). Plain batches (uncompressed,
dense, without nulls) are decoded straight from their message's flatbuffer, without building
pyarrow arrays; any other batch goes through ``pa.ipc.read_record_batch``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from ._codec import Codec, decode_field
from ._errors import ClosedError, ConfigError, FileFormatError, TruncatedFileError
from ._ipc import Located, batch_info, direct_plan, locate
from ._knowledge import Chunk, Description, FieldDesc, Knowledge, Ragged, Value, slice_value
from ._knowledge import to_dtype as _to_dtype
from ._store import ColumnSpec, Layout, bad_metadata, parse_layout, shard_paths

__all__ = ["KnowledgeFile", "batch_info"]

logger = logging.getLogger("pantheon")

FILE_MAGIC = b"ARROW1\x00\x00"
_LOCATED_KEPT = 64  # distinct batch metadata remembered (one per batch size, usually 1 or 2)


# --------------------------------------------------------------------------- decoding

_Decoder = Callable[[pa.Array], Value]


def _empty(dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    out.flags.writeable = False
    return out


def _no_nulls(array: pa.Array) -> None:
    if array.null_count:
        raise ValueError(f"{array.null_count} null values; knowledge columns never hold nulls")


def _dense_decoder(col: ColumnSpec) -> _Decoder:
    dtype = _to_dtype(col.dtype)  # bool and bfloat16 read their storage bytes directly
    item, inner, width = dtype.itemsize, col.inner, col.width
    if not inner:

        def decode_flat(array: pa.Array) -> Value:
            n = len(array)
            bufs = array.buffers()
            if bufs[0] is not None:
                _no_nulls(array)
            if n == 0:
                return _empty(dtype, (0,))
            return np.frombuffer(bufs[1], dtype, n, array.offset * item)

        return decode_flat

    def decode_fixed(array: pa.Array) -> Value:
        n = len(array)
        bufs = array.buffers()
        if bufs[0] is not None or bufs[1] is not None:
            _no_nulls(array)
            _no_nulls(array.values)
        if n * width == 0:
            return _empty(dtype, (n, *inner))
        start = array.offset * width + array.values.offset
        flat = np.frombuffer(bufs[2], dtype, n * width, start * item)
        return flat.reshape((n, *inner))

    return decode_fixed


def _ragged_decoder(col: ColumnSpec) -> _Decoder:
    dtype = _to_dtype(col.dtype)
    item, inner, width = dtype.itemsize, col.inner, col.width

    def decode_ragged(array: pa.Array) -> Value:
        n = len(array)
        bufs = array.buffers()
        if any(b is not None for b in bufs[:1] + bufs[2:-1]):
            _no_nulls(array)
            _no_nulls(array.values)
        if n == 0:
            return Ragged(_empty(dtype, (0, *inner)), np.zeros(0, np.int64))
        offsets = np.frombuffer(bufs[1], np.int64, n + 1, array.offset * 8)
        lo, hi = int(offsets[0]), int(offsets[-1])
        child = array.values
        start = (child.values.offset + (child.offset + lo) * width) if inner else child.offset + lo
        count = (hi - lo) * width
        if count <= 0 or bufs[-1] is None:
            values = _empty(dtype, (max(hi - lo, 0), *inner))
        else:
            values = np.frombuffer(bufs[-1], dtype, count, start * item).reshape((hi - lo, *inner))
        return Ragged(values, np.diff(offsets))

    return decode_ragged


def _decoder(col: ColumnSpec) -> _Decoder:
    return _ragged_decoder(col) if col.lod_level else _dense_decoder(col)


class _Plan(NamedTuple):
    """How to rebuild one key from a record batch, computed once per file."""

    key: str
    field: FieldDesc
    codec: Codec | None
    columns: list[tuple[int, str, _Decoder]]  # (column index, part suffix, decoder)


def _plans(layout: Layout) -> list[_Plan]:
    plans: dict[str, _Plan] = {}
    for index, (key, col) in enumerate(layout.columns, start=1):
        if key not in plans:
            plans[key] = _Plan(key, layout.desc[key], layout.codecs.get(key), [])
        plans[key].columns.append((index, col.part, _decoder(col)))
    return list(plans.values())


# --------------------------------------------------------------------------- scanning


_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError, OverflowError, struct.error)


class _CutShort(FileFormatError):
    """A file cut before its first complete batch (a shard may legitimately end so)."""


class _Shard:
    """One mapped Arrow IPC file: its schema, layout, record batch messages and sizes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nbytes = path.stat().st_size
        if self.nbytes == 0:
            raise _CutShort(
                f"{path}: the knowledge file is empty (0 bytes): its writer stopped before "
                "writing anything; dump the knowledge again"
            )
        self._map = pa.memory_map(str(path), "r")
        try:
            self._scan()
        except BaseException:
            self._map.close()
            raise

    def _scan(self) -> None:
        path, buf = self.path, self._map.read_buffer()
        head = buf.slice(0, min(8, self.nbytes)).to_pybytes()
        if not FILE_MAGIC.startswith(head[:6]):
            raise FileFormatError(
                f"{path}: not an Arrow IPC file: it starts with {head!r}, not the magic bytes "
                "b'ARROW1'. Pass a knowledge file written by Pantheon (Teacher.dump)"
            )
        if len(head) < 8:
            raise _CutShort(
                f"{path}: cut short inside the 8-byte file header ({len(head)} bytes); "
                "the writer stopped before the first batch; dump the knowledge again"
            )
        stream = pa.BufferReader(buf.slice(8))
        messages = pa.ipc.MessageReader.open_stream(stream)
        self.schema = self._read_schema(messages)
        try:
            self.layout = parse_layout(path, self.schema)
        except UnicodeDecodeError as exc:
            raise bad_metadata(path, f"a column name or metadata is not UTF-8 ({exc})") from None
        self.end = 8 + stream.tell()  # where the last complete message ends
        self.stop = self._read_batches(stream, messages)
        self.complete = self._footer_ok(buf, self.stop)
        if not self.complete and not self.messages:
            raise _CutShort(
                f"{path}: cut short after its schema, before its first complete batch "
                f"({self.nbytes} bytes); the writer stopped early; dump the knowledge again"
            )

    def _read_schema(self, messages: pa.ipc.MessageReader) -> pa.Schema:
        try:
            first = messages.read_next_message()
            if first.type != "schema":  # (pyarrow crashes reading other messages as a schema)
                raise ValueError(f"the first message is a {first.type} message, not a schema")
            return pa.ipc.read_schema(first)
        except StopIteration:
            raise _CutShort(
                f"{self.path}: cut short after the file header, before the schema; the writer "
                "stopped before the first batch; dump the knowledge again"
            ) from None
        except _READ_ERRORS as exc:
            raise _CutShort(
                f"{self.path}: cut short or corrupt inside the schema message ({exc}); the "
                "writer stopped before the first batch; dump the knowledge again"
            ) from None

    def _read_batches(self, stream: pa.BufferReader, messages: pa.ipc.MessageReader) -> str | None:
        """Collect the complete record batch messages; return why reading stopped early."""
        self.messages: list[pa.ipc.Message] = []
        self.sizes: list[int] = []
        self.compression: str | None = None
        infos: dict[bytes, tuple[int, str | None]] = {}  # batches of one size share metadata
        while True:
            try:
                msg = messages.read_next_message()
                if msg.type != "record batch":
                    return f"an unexpected {msg.type} message"
                metadata = msg.metadata.to_pybytes()
                info = infos.get(metadata)
                if info is None:
                    if len(infos) >= _LOCATED_KEPT:
                        infos.clear()
                    info = infos[metadata] = batch_info(metadata)
                rows, self.compression = info
            except StopIteration:
                return None
            except _READ_ERRORS as exc:
                return str(exc)
            self.messages.append(msg)
            self.sizes.append(rows)
            self.end = 8 + stream.tell()

    def _footer_ok(self, buf: pa.Buffer, stop: str | None) -> bool:
        if self.nbytes < 16 or buf.slice(self.nbytes - 6).to_pybytes() != b"ARROW1":
            return False
        try:
            listed = pa.ipc.open_file(buf).num_record_batches
        except _READ_ERRORS:
            return False
        if stop is not None or listed != len(self.messages):
            raise FileFormatError(
                f"{self.path}: corrupt knowledge file: its footer lists {listed} batches but "
                f"the stream holds {len(self.messages)} readable ones (stopped at byte "
                f"{self.end}: {stop or 'end of stream'}); dump the knowledge again"
            )
        return True

    def read(self, index: int) -> pa.RecordBatch:
        return pa.ipc.read_record_batch(self.messages[index], self.schema)

    def close(self) -> None:
        self.messages = []
        self._map.close()


# --------------------------------------------------------------------------- KnowledgeFile


class KnowledgeFile:
    """A knowledge file (or a directory of shards) opened for reading, memory-mapped.

    Args:
        path: an Arrow IPC knowledge file, or a directory whose ``*.arrow`` shards are read
            in name order as one stream (all must share one description).
        allow_truncated: read a file cut short (its writer was killed) up to its last
            complete batch, set :attr:`truncated` and log a warning (default). With False,
            raise the :class:`~pantheon.TruncatedFileError` instead.
        sparse_topk: hand top-k fields as :class:`~pantheon.SparseTopK` (values + indices)
            instead of densifying them (default False).

    Attributes:
        desc: the description, with the original dtypes.
        num_samples / num_batches: what can be read. nbytes: bytes on disk (all shards).
        compression: ``"lz4"``, ``"zstd"`` or None. codecs: key -> codec spec (keys with one).
        truncated: the :class:`~pantheon.TruncatedFileError` of a file cut short, else None.
        shards: the files read, in order. metadata: the user metadata (str -> str).
        version: the Pantheon version that wrote the file.

    Values are read-only views of the mapped file where the stored dtype is the
    description's dtype (copy them to modify them); they stay valid after :meth:`close`.

    Raises:
        FileFormatError: missing path, empty or non-Arrow file, an Arrow file that is not a
            Pantheon knowledge file, corrupt metadata, a directory without shards or with
            shards of different descriptions, a file cut before its first complete batch.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allow_truncated: bool = True,
        sparse_topk: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sparse_topk = sparse_topk
        self._closed = False
        self._shards: list[_Shard] = []
        try:
            self._open(allow_truncated)
        except BaseException:
            self.close()
            raise

    def _open(self, allow_truncated: bool) -> None:
        path = self.path
        if not path.exists():
            raise FileFormatError(
                f"{path}: no such knowledge file or directory; check the path (teachers "
                "write it with Teacher(out_path=...).dump)"
            )
        if path.is_dir():
            files = shard_paths(path)
            if not files:
                raise FileFormatError(
                    f"{path}: a directory without shards (*.arrow files); pass a knowledge "
                    "file or the directory a sharded dump wrote"
                )
        else:
            files = [path]
        cut: tuple[Path, FileFormatError] | None = None
        for i, file in enumerate(files):
            try:
                self._shards.append(_Shard(file))
            except _CutShort as exc:
                if i == 0 or i != len(files) - 1:
                    raise
                cut = (file, exc)  # the last shard of a sharded dump, cut before its first batch
            except OSError as exc:
                raise FileFormatError(f"{file}: cannot be read ({exc})") from None
        first = self._shards[0]
        for shard in self._shards[1:]:
            if (shard.layout.desc, shard.layout.storage) != (
                first.layout.desc,
                first.layout.storage,
            ):
                raise FileFormatError(
                    f"{shard.path}: this shard's description {shard.layout.desc} differs from "
                    f"the first shard's {first.layout.desc} ({first.path}); every shard of a "
                    "directory must hold the same knowledge"
                )
        self._layout = first.layout
        self._plans = _plans(first.layout)
        self._decoders = [_decoder(col) for _, col in first.layout.columns]
        self._direct = direct_plan(first.layout)
        self._located: dict[tuple[bytes, int], Located | None] = {}
        self._index: list[tuple[_Shard, int]] = [
            (s, i) for s in self._shards for i in range(len(s.messages))
        ]
        self._sizes = [n for s in self._shards for n in s.sizes]
        self._starts = [0]
        for n in self._sizes:
            self._starts.append(self._starts[-1] + n)
        self.truncated = self._truncation(cut)
        if self.truncated is not None:
            if not allow_truncated:
                raise self.truncated
            logger.warning("%s", self.truncated)

    def _truncation(self, cut: tuple[Path, FileFormatError] | None) -> TruncatedFileError | None:
        batches, samples = len(self._sizes), self._starts[-1]
        shard = next((s for s in self._shards if not s.complete), None)
        if shard is not None:
            where, offset = shard.path, shard.end
            reason = f"the footer is missing ({shard.stop or 'the stream ends'} at byte {offset})"
        elif cut is not None:
            where, offset, reason = cut[0], 0, str(cut[1])
        else:
            return None
        return TruncatedFileError(
            f"{where}: knowledge file cut short (its writer was stopped): {reason}. "
            f"{batches} complete batches ({samples} samples) can be read; dump again to "
            "get the rest",
            path=str(where),
            complete_batches=batches,
            complete_samples=samples,
            offset=offset,
        )

    # ----------------------------------------------------------------- properties

    @property
    def desc(self) -> Description:
        """The knowledge description (original dtypes), a fresh copy."""
        return {k: {**f, "shape": list(f["shape"])} for k, f in self._layout.desc.items()}

    @property
    def num_samples(self) -> int:
        """Samples that can be read."""
        return self._starts[-1]

    @property
    def num_batches(self) -> int:
        """Complete batches that can be read."""
        return len(self._sizes)

    @property
    def nbytes(self) -> int:
        """Bytes on disk, all shards together."""
        return sum(s.nbytes for s in self._shards)

    @property
    def compression(self) -> str | None:
        """``"lz4"``, ``"zstd"`` or None (uncompressed), from the first batch."""
        return next((s.compression for s in self._shards if s.messages), None)

    @property
    def codecs(self) -> dict[str, dict[str, Any]]:
        """Key -> codec spec, for the keys stored with a codec."""
        return {k: c.spec() for k, c in self._layout.codecs.items()}

    @property
    def storage(self) -> dict[str, Any]:
        """The ``pantheon.storage`` metadata: per key, its codec and stored columns."""
        return json.loads(json.dumps(self._layout.storage))  # type: ignore[no-any-return]

    @property
    def metadata(self) -> dict[str, str]:
        """User metadata given to the writer."""
        return dict(self._layout.user)

    @property
    def version(self) -> str:
        """The Pantheon version that wrote the file."""
        return self._layout.version

    @property
    def shards(self) -> list[Path]:
        """The files read, in order (one for a single file)."""
        return [s.path for s in self._shards]

    def batch_sizes(self) -> list[int]:
        """The number of samples of every complete batch, in order."""
        return list(self._sizes)

    # ----------------------------------------------------------------- reading

    def iter_chunks(self, start_sample: int = 0) -> Iterator[Chunk]:
        """Yield the knowledge as :class:`~pantheon._knowledge.Chunk` s, one per stored batch.

        Args:
            start_sample: skip the samples before this position (0-based, in file order):
                whole batches are skipped without being decoded and the first one is sliced
                (views). Empty batches are skipped.

        Raises:
            ClosedError: the file was closed. FileFormatError: a batch that cannot be decoded.
        """
        if self._closed:
            raise ClosedError(f"{self.path}: the knowledge file is closed; open it again")
        if start_sample < 0:
            raise ConfigError(f"start_sample must be >= 0, got {start_sample}")
        first = max(bisect.bisect_right(self._starts, start_sample) - 1, 0)
        sizes, starts = self._sizes, self._starts
        for b in range(first, len(sizes)):
            if self._closed:
                raise ClosedError(f"{self.path}: the knowledge file was closed while reading")
            skip = start_sample - starts[b]
            if skip <= 0:
                if sizes[b]:
                    yield self._decode(b)
            elif skip < sizes[b]:
                ids, data = self._decode(b)
                yield Chunk(
                    ids[skip:], {k: slice_value(v, skip, len(ids)) for k, v in data.items()}
                )

    def _decode(self, index: int) -> Chunk:
        shard, local = self._index[index]
        rows = self._sizes[index]
        try:
            direct = self._read_direct(shard, local)
            if direct is None:
                batch = shard.read(local)
                ids = _decode_ids(batch.column(0))
                values = [ids, *(d(batch.column(i)) for i, d in enumerate(self._decoders, 1))]
            else:
                ids, values = direct
            data: Knowledge = {}
            for key, field, codec, columns in self._plans:
                if codec is None:
                    value = values[columns[0][0]]
                else:
                    parts = {part: values[col] for col, part, _ in columns}
                    value = decode_field(codec, parts, field, sparse=self.sparse_topk)
                if len(value) != rows:
                    raise ValueError(f"{key!r} holds {len(value)} samples, not {rows}")
                data[key] = value
            if len(ids) != rows:
                raise ValueError(f"{len(ids)} sample ids for {rows} samples")
        except (*_READ_ERRORS, TypeError) as exc:
            raise FileFormatError(
                f"{shard.path}: batch {local} cannot be decoded ({exc}); the file is corrupt, "
                "dump the knowledge again"
            ) from None
        return Chunk(ids, data)

    def _read_direct(self, shard: _Shard, local: int) -> tuple[np.ndarray, list[Value]] | None:
        """A plain batch's ids and columns as views of its mapped body, or None (not plain).

        Where the columns lie is worked out once per distinct message metadata (a file's
        batches of one size share it) and kept.
        """
        if self._direct is None:
            return None
        msg = shard.messages[local]
        body = msg.body
        key = (msg.metadata.to_pybytes(), body.size)
        try:
            located = self._located[key]
        except KeyError:
            try:
                located = locate(key[0], key[1], self._direct)
            except (ValueError, IndexError, struct.error):
                located = None
            if len(self._located) >= _LOCATED_KEPT:
                self._located.clear()
            self._located[key] = located
        if located is None:
            return None
        arrays = [
            np.frombuffer(body, dtype, count, at).reshape(shape)
            for dtype, count, at, shape in located
        ]
        return arrays[0], [*arrays]

    # ----------------------------------------------------------------- lifetime

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Unmap the files (idempotent). Arrays already read stay valid."""
        self._closed = True
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> KnowledgeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.num_samples} samples"
        return f"KnowledgeFile({str(self.path)!r}, {state}, keys={list(self._layout.desc)})"


def _decode_ids(array: pa.Array) -> np.ndarray:
    n = len(array)
    if array.null_count:
        raise ValueError("null sample ids")
    if n == 0:
        return _empty(np.dtype(np.int64), (0,))
    return np.frombuffer(array.buffers()[1], np.int64, n, array.offset * 8)
