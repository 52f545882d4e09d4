"""One mapped Arrow IPC knowledge file: its schema, layout and complete record batch messages.

A file whose footer is missing (its writer was killed) is scanned up to its last complete
message; the reader then says what was cut.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa

from .._errors import FileFormatError
from .bounds import buffer_bounds, check_compressed
from .ipc import batch_info
from .layout import bad_metadata, parse_layout

__all__ = ["FILE_MAGIC", "READ_ERRORS", "CutShort", "Shard"]

FILE_MAGIC = b"ARROW1\x00\x00"
_LOCATED_KEPT = 64  # distinct batch metadata remembered (one per batch size, usually 1 or 2)

READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError, OverflowError, struct.error)


class CutShort(FileFormatError):
    """A file cut before its first complete batch (a shard may legitimately end so)."""


class Shard:
    """One mapped Arrow IPC file: its schema, layout, record batch messages and sizes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nbytes = path.stat().st_size
        if self.nbytes == 0:
            raise CutShort(
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
            raise CutShort(
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
        self.bounds = buffer_bounds(self.layout)
        self.end = 8 + stream.tell()  # where the last complete message ends
        self.stop = self._read_batches(stream, messages)
        self.complete = self._footer_ok(buf, self.stop)
        if not self.complete and not self.messages:
            raise CutShort(
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
            raise CutShort(
                f"{self.path}: cut short after the file header, before the schema; the writer "
                "stopped before the first batch; dump the knowledge again"
            ) from None
        except READ_ERRORS as exc:
            raise CutShort(
                f"{self.path}: cut short or corrupt inside the schema message ({exc}); the "
                "writer stopped before the first batch; dump the knowledge again"
            ) from None

    def _read_batches(self, stream: pa.BufferReader, messages: pa.ipc.MessageReader) -> str | None:
        """Collect the complete record batch messages; return why reading stopped early."""
        self.messages: list[pa.ipc.Message] = []
        self.sizes: list[int] = []
        self.compressed: list[bool] = []
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
            except READ_ERRORS as exc:
                return str(exc)
            self.messages.append(msg)
            self.sizes.append(rows)
            self.compressed.append(self.compression is not None)
            self.end = 8 + stream.tell()

    def _footer_ok(self, buf: pa.Buffer, stop: str | None) -> bool:
        if self.nbytes < 16 or buf.slice(self.nbytes - 6).to_pybytes() != b"ARROW1":
            return False
        try:
            listed = pa.ipc.open_file(buf).num_record_batches
        except READ_ERRORS:
            return False
        if stop is not None or listed != len(self.messages):
            raise FileFormatError(
                f"{self.path}: corrupt knowledge file: its footer lists {listed} batches but "
                f"the stream holds {len(self.messages)} readable ones (stopped at byte "
                f"{self.end}: {stop or 'end of stream'}); dump the knowledge again"
            )
        return True

    def read(self, index: int) -> pa.RecordBatch:
        """Batch ``index`` through pyarrow, checked: a compressed batch's claimed sizes against
        the layout before anything is decompressed (:func:`.bounds.check_compressed`), then
        pyarrow's full validation (buffer sizes, offsets; O(rows), not O(data)).

        Raises:
            FileFormatError: a compressed buffer claiming more than the layout allows.
            pyarrow.ArrowException, ValueError, ...: anything else pyarrow refuses
                (:data:`READ_ERRORS`; the reader names the file and batch).
        """
        message = self.messages[index]
        if self.compressed[index]:
            check_compressed(self.path, index, message, self.bounds)
        batch = pa.ipc.read_record_batch(message, self.schema)
        batch.validate(full=True)
        return batch

    def close(self) -> None:
        self.messages = []
        self._map.close()
