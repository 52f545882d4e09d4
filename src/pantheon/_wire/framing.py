"""The framing over a byte stream: :class:`StreamConnection` sends and receives whole messages.

Receiving reads through a staging buffer: a prefix, table and header (and the frames of
small messages) come from few ``recv_into`` calls; large frames are read with ``recv_into``
directly into their receive buffer. Caps on the header size, the number of frames and the
message size are checked on the prefix and the frame table, before anything is allocated; a
message over a cap raises :class:`~pantheon.ProtocolError` and closes the connection.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from .._errors import ConfigError, ConnectionLostError, PantheonTimeoutError, ProtocolError
from .core import (
    FRAME_ALIGN,
    FRAME_FORMAT,
    MAGIC,
    PREFIX_SIZE,
    Alloc,
    ByteStream,
    Connection,
    Frame,
    Message,
    Pieces,
    SendTimeout,
    byte_view,
    message_type,
)

__all__ = ["StreamConnection"]

_PREFIX = struct.Struct("<4sBBHII")
_STRUCTS: dict[str, struct.Struct] = {}
_STAGING = 128 * 1024  # initial size of the receive staging buffer
_READ_CHUNK = 64 * 1024  # most bytes read into the staging buffer beyond what is needed
_SMALL_BODY = 64 * 1024  # messages whose frames total at most this go through staging


class _Pending:
    """A message whose prefix, table and header were read but not all of its frames."""

    __slots__ = ("body", "frames", "header", "index", "lengths", "offset", "size", "type")

    def __init__(
        self,
        type: int,
        header: dict[str, Any],
        frames: list[memoryview],
        lengths: Sequence[int],
        size: int,
        body: int,
    ) -> None:
        self.type = type
        self.header = header
        self.frames = frames
        self.lengths = lengths
        self.size = size
        self.body = body
        self.index = 0
        self.offset = 0

    def received(self) -> int:
        return sum(self.lengths[: self.index]) + self.offset


def _frame_views(frames: Sequence[Frame]) -> tuple[list[memoryview], list[int]]:
    """The byte views to send (a :class:`Pieces` frame's pieces in order) and each frame's
    length."""
    views: list[memoryview] = []
    lengths: list[int] = []
    for i, f in enumerate(frames):
        if type(f) is Pieces:
            pieces = [byte_view(p, i) for p in f.parts]
            views += pieces
            lengths.append(sum(v.nbytes for v in pieces))
        else:
            view = byte_view(f, i)
            views.append(view)
            lengths.append(view.nbytes)
    return views, lengths


def _struct(fmt: str) -> struct.Struct:
    """A compiled ``struct.Struct`` for ``fmt``, cached (prefix and frame tables)."""
    compiled = _STRUCTS.get(fmt)
    if compiled is None:
        compiled = struct.Struct(fmt)
        if len(_STRUCTS) < 1024:
            _STRUCTS[fmt] = compiled
    return compiled


def _pack_header(header: Mapping[str, Any]) -> bytes:
    try:
        return msgpack.packb(  # type: ignore[no-any-return]
            header if type(header) is dict else dict(header), use_bin_type=True
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(
            f"a message header must hold only msgpack-native values (None, bool, int, float, "
            f"str, bytes, list, tuple, dict): {exc}"
        ) from None


def _bad_magic(magic: bytes, peer: str) -> str:
    hint = ""
    if magic[:1] == b"\x80":
        hint = " (that looks like a pickle stream; Pantheon never unpickles)"
    elif magic[:4] in (b"GET ", b"POST", b"HTTP", b"PUT ", b"HEAD"):
        hint = " (that looks like HTTP)"
    elif magic[:2] == b"\x16\x03":
        hint = " (that looks like TLS)"
    return (
        f"{peer} sent bytes that are not a Pantheon message: expected magic {MAGIC!r}, got "
        f"{magic!r}{hint}; only Pantheon peers may connect to this port"
    )


class StreamConnection(Connection):
    """The framing over a :class:`~pantheon._wire.core.ByteStream` (TCP or in-memory).

    Receiving reads through a staging buffer: a prefix, table and header (and the frames of
    small messages) come from few ``recv_into`` calls; large frames are read with
    ``recv_into`` directly into their receive buffer.
    """

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self.peer = stream.peer
        self.local = stream.local
        self._send_lock = threading.Lock()
        self._closed = False
        self._pending: _Pending | None = None
        self._buf = bytearray(_STAGING)
        self._mv = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._stream.close()

    def _closed_error(self) -> ConnectionLostError:
        return ConnectionLostError(f"the connection to {self.peer} is closed")

    # -- sending ----------------------------------------------------------------------------

    def send(
        self,
        type: int,
        header: Mapping[str, Any] | None = None,
        frames: Sequence[Frame] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        if self._closed:
            raise self._closed_error()
        views, lengths = _frame_views(frames)
        hbytes = _pack_header(header) if header else b""
        n = len(lengths)
        hlen = len(hbytes)
        size = PREFIX_SIZE + 8 * n + hlen + sum(lengths)
        if n > self.max_frames or hlen > self.max_header_bytes or size > self.max_message_bytes:
            self._check_send_caps(n, hlen, size)
        try:
            meta = _struct(f"<4sBBHII{n}Q").pack(MAGIC, FRAME_FORMAT, 0, type, hlen, n, *lengths)
        except struct.error:
            raise ConfigError(f"message type must be an int in 0..65535, got {type!r}") from None
        buffers = (
            [memoryview(meta), memoryview(hbytes), *views] if hlen else [memoryview(meta), *views]
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise PantheonTimeoutError(
                f"could not send to {self.peer} within {timeout:g} s: other threads were sending"
            )
        try:
            if self._closed:
                raise self._closed_error()
            self._stream.send_all(buffers, deadline)
            self.bytes_sent += size
            self.messages_sent += 1
        except SendTimeout as exc:
            if exc.sent:
                self.close()
            state = (
                "the connection was closed (a message was cut)" if exc.sent else "nothing was sent"
            )
            raise PantheonTimeoutError(
                f"sending a message of {size} bytes to {self.peer}: no byte left for "
                f"{timeout:g} s (the peer is not reading); {state}"
            ) from None
        except ConnectionLostError:
            self._closed = True
            self._stream.close()
            raise
        finally:
            self._send_lock.release()
        return size

    def _check_send_caps(self, n: int, hlen: int, size: int) -> None:
        for field, value, limit in (
            ("max_frames", n, self.max_frames),
            ("max_header_bytes", hlen, self.max_header_bytes),
            ("max_message_bytes", size, self.max_message_bytes),
        ):
            if value > limit:
                raise ConfigError(
                    f"message to {self.peer} exceeds {field}: {value} > {limit}; split the data "
                    f"or raise {field} on both connections"
                )

    # -- receiving --------------------------------------------------------------------------

    def recv(self, timeout: float | None = None, *, alloc: Alloc | None = None) -> Message:
        if self._closed:
            raise self._closed_error()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            p = self._pending
            if p is None:
                p = self._pending = self._read_meta(deadline, alloc)
            if p.body <= _SMALL_BODY:
                self._read_small(p, deadline)
            else:
                self._read_large(p, deadline)
        except PantheonTimeoutError:
            if self._closed:
                raise self._closed_error() from None
            p = self._pending
            where = (
                ""
                if p is None
                else (
                    f" (in the middle of a message: {p.received()} of {p.body} frame bytes; "
                    "the next recv() continues it)"
                )
            )
            raise PantheonTimeoutError(
                f"no message from {self.peer} within {timeout:g} s{where}"
            ) from None
        except BaseException:
            self.close()
            raise
        self._pending = None
        self.messages_received += 1
        self.bytes_received += p.size
        return Message(message_type(p.type), p.header, p.frames)

    def _fill(self, n: int, deadline: float | None) -> None:
        """Make at least ``n`` bytes available in the staging buffer."""
        start, end = self._start, self._end
        if start + n > len(self._buf):
            avail = end - start
            if n > len(self._buf):
                new = bytearray(max(n, 2 * len(self._buf)))
                new[:avail] = self._mv[start:end]
                self._mv.release()
                self._buf, self._mv = new, memoryview(new)
            else:
                self._mv[:avail] = self._mv[start:end]
            self._start, self._end = 0, avail
        cap = len(self._buf)
        while self._end - self._start < n:
            stop = min(cap, max(self._end + _READ_CHUNK, self._start + n))
            k = self._stream.recv_into(self._mv[self._end : stop], deadline)
            if k == 0:
                raise self._eof(self._end - self._start)
            self._end += k
            self.bytes_read += k

    def _eof(self, partial: int) -> ConnectionLostError:
        """The stream ended. Inside a message too, it is a lost connection (a peer killed
        while sending), which reconnecting mends, not a protocol error."""
        p = self._pending
        if p is None and partial == 0:
            return ConnectionLostError(f"{self.peer} closed the connection")
        got = partial if p is None else p.received() + partial
        want = "its prefix and header" if p is None else f"{p.body} frame bytes"
        return ConnectionLostError(
            f"truncated message: {self.peer} closed the connection after {got} bytes of a "
            f"message (expected {want})"
        )

    def _consume(self, n: int) -> None:
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0

    def _read_meta(self, deadline: float | None, alloc: Alloc | None) -> _Pending:
        """Read and check the prefix, the frame table and the header; allocate the frames."""
        if self._end - self._start < PREFIX_SIZE:
            self._fill(PREFIX_SIZE, deadline)
        magic, fmt, _flags, mtype, hlen, nframes = _PREFIX.unpack_from(self._buf, self._start)
        meta = PREFIX_SIZE + 8 * nframes + hlen
        if (
            magic != MAGIC
            or fmt != FRAME_FORMAT
            or nframes > self.max_frames
            or hlen > self.max_header_bytes
            or meta > self.max_message_bytes
        ):
            self._reject_prefix(magic, fmt, nframes, hlen, meta)
        if self._end - self._start < meta:
            self._fill(meta, deadline)
        pos = self._start + PREFIX_SIZE
        lengths: Sequence[int] = (
            _struct(f"<{nframes}Q").unpack_from(self._buf, pos) if nframes else ()
        )
        body = sum(lengths)
        size = meta + body
        if size > self.max_message_bytes:
            big = max(range(nframes), key=lengths.__getitem__)
            raise ProtocolError(
                f"message from {self.peer} exceeds max_message_bytes: its size is {size} bytes "
                f"(frame {big} alone claims {lengths[big]}), the limit is "
                f"{self.max_message_bytes}; raise max_message_bytes on the receiving "
                "connection if such messages are expected"
            )
        header = self._unpack_header(pos + 8 * nframes, hlen) if hlen else {}
        self._consume(meta)
        frames = self._allocate(lengths, body, alloc)
        return _Pending(mtype, header, frames, lengths, size, body)

    def _reject_prefix(self, magic: bytes, fmt: int, nframes: int, hlen: int, meta: int) -> None:
        """Raise the ProtocolError that a bad prefix deserves."""
        if magic != MAGIC:
            raise ProtocolError(_bad_magic(bytes(magic), self.peer))
        if fmt != FRAME_FORMAT:
            raise ProtocolError(
                f"{self.peer} uses frame format {fmt}, this side speaks {FRAME_FORMAT}; "
                "install the same pantheon version on both sides"
            )
        self._check_cap("max_frames", "number of frames", nframes, self.max_frames)
        self._check_cap("max_header_bytes", "header length", hlen, self.max_header_bytes)
        self._check_cap(
            "max_message_bytes", "prefix, table and header", meta, self.max_message_bytes
        )

    def _check_cap(self, field: str, what: str, value: int, limit: int) -> None:
        if value > limit:
            raise ProtocolError(
                f"message from {self.peer} exceeds {field}: its {what} is {value}, the limit is "
                f"{limit}; raise {field} on the receiving connection if such messages are expected"
            )

    def _unpack_header(self, pos: int, hlen: int) -> dict[str, Any]:
        try:
            header = msgpack.unpackb(self._mv[pos : pos + hlen], raw=False, use_list=True)
        except Exception as exc:  # msgpack raises several unrelated classes on bad input
            raise ProtocolError(
                f"message from {self.peer} has a malformed msgpack header ({hlen} bytes): {exc}"
            ) from None
        if not isinstance(header, dict):
            raise ProtocolError(
                f"message from {self.peer} has a header that is a {type(header).__name__}, "
                "expected a msgpack map"
            )
        return header

    def _allocate(self, lengths: Sequence[int], body: int, alloc: Alloc | None) -> list[memoryview]:
        """One receive buffer for all frames, each frame at a multiple of FRAME_ALIGN in it."""
        if not lengths:
            return []
        if len(lengths) == 1:
            offsets: Sequence[int] = (0,)
            total = body
        else:
            offsets = []
            total = 0
            for n in lengths:
                total = -(-total // FRAME_ALIGN) * FRAME_ALIGN
                offsets.append(total)
                total += n
        if alloc is not None:
            region = _alloc_region(alloc, total)
        elif total <= _SMALL_BODY:  # malloc alignment (16 bytes) suits every dtype
            region = memoryview(bytearray(total))
        else:  # large: FRAME_ALIGN-aligned in memory too
            arr = np.empty(total + FRAME_ALIGN - 1, dtype=np.uint8)
            skip = -arr.ctypes.data % FRAME_ALIGN
            region = memoryview(arr)[skip : skip + total]  # type: ignore[arg-type]
        return [region[o : o + n] for o, n in zip(offsets, lengths, strict=True)]

    def _read_small(self, p: _Pending, deadline: float | None) -> None:
        """Frames of a small message: through the staging buffer."""
        body = p.body
        if not body:
            return
        if self._end - self._start < body:
            self._fill(body, deadline)
        pos = self._start
        mv = self._mv
        for f in p.frames:
            k = len(f)
            if k:
                f[:] = mv[pos : pos + k]
                pos += k
        self._consume(body)

    def _read_large(self, p: _Pending, deadline: float | None) -> None:
        """Frames of a large message: what is staged, then ``recv_into`` each frame directly."""
        frames = p.frames
        i, off = p.index, p.offset
        recv_into = self._stream.recv_into
        try:
            while i < len(frames):
                f = frames[i]
                n = len(f)
                while off < n:
                    avail = self._end - self._start
                    if avail:
                        k = min(avail, n - off)
                        f[off : off + k] = self._mv[self._start : self._start + k]
                        self._consume(k)
                    else:
                        k = recv_into(f[off:], deadline)
                        if k == 0:
                            p.index, p.offset = i, off  # for the error's byte count
                            raise self._eof(0)
                        self.bytes_read += k
                    off += k
                i += 1
                off = 0
        finally:
            p.index, p.offset = i, off


def _alloc_region(alloc: Alloc, total: int) -> memoryview:
    buf = alloc(total)
    try:
        view = memoryview(buf)
    except TypeError:
        raise ConfigError(
            f"alloc({total}) returned a {type(buf).__name__}; expected a writable buffer "
            "(bytearray or numpy uint8 array)"
        ) from None
    if view.readonly or not view.c_contiguous or view.nbytes < total:
        raise ConfigError(
            f"alloc({total}) returned a buffer of {view.nbytes} bytes (readonly={view.readonly}, "
            f"contiguous={view.c_contiguous}); expected a writable contiguous buffer of at least "
            f"{total} bytes"
        )
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view[:total]
