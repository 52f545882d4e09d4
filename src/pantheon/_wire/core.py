"""The wire's core: message types, the received :class:`Message`, the :class:`Connection`
interface and the :class:`ByteStream` a framing runs on.

One message is a fixed 16-byte prefix, a table of frame lengths, a msgpack header and raw
frames (``docs/protocol.md`` gives every byte)::

    prefix  magic b"PNTH" | frame format u8 | flags u8 | type u16 | header length u32 | frames u32
    table   one u64 length per frame
    header  a msgpack map (absent when its length is 0: an empty map)
    frames  the frames' bytes, back to back

All integers are little-endian. This module defines interfaces only; the framing
(:mod:`.framing`) and the transports (:mod:`.tcp`, :mod:`.inproc`) implement them, and the
package seam (``pantheon._wire``) wires them together.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from types import TracebackType
from typing import Any, NamedTuple, Union

import numpy as np

from .._errors import ConfigError, PantheonTimeoutError

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FRAME_ALIGN",
    "FRAME_FORMAT",
    "MAGIC",
    "PREFIX_SIZE",
    "PROTOCOL_VERSION",
    "Alloc",
    "Buffer",
    "ByteStream",
    "Connection",
    "Frame",
    "Message",
    "MsgType",
    "Pieces",
    "SendTimeout",
    "byte_view",
    "frames_nbytes",
    "message_type",
    "wait_slice",
]

MAGIC = b"PNTH"
"""The first four bytes of every message."""
FRAME_FORMAT = 1
"""Version of the framing (prefix layout); byte 4 of every message."""
PROTOCOL_VERSION = 2
"""Version of the message vocabulary, exchanged and checked in the handshake."""
PREFIX_SIZE = 16
"""Bytes in the fixed prefix."""
FRAME_ALIGN = 64
"""Alignment (bytes) of each received frame inside its receive buffer."""
DEFAULT_MAX_HEADER_BYTES = 1 << 20
"""Default cap on a message's msgpack header: 1 MiB."""
DEFAULT_MAX_FRAMES = 4096
"""Default cap on a message's number of frames."""
DEFAULT_MAX_MESSAGE_BYTES = 4 << 30
"""Default cap on a whole message (prefix, table, header and frames): 4 GiB."""


Buffer = Union[bytes, bytearray, memoryview, "np.ndarray[Any, Any]"]
"""A frame to send: any C-contiguous object exporting the buffer protocol (or a numpy array)."""


class Pieces:
    """One frame made of several buffers sent back to back: frames gathered without a copy.

    The receiver sees one frame, the pieces' bytes in order. The TCP transport gives the
    pieces to ``sendmsg`` as they are; the same-host ring copies each into the slot once.
    Used to send consecutive chunks of knowledge as one message (their arrays' bytes joined
    along the sample axis are those of the joined arrays).

    Args:
        parts: the buffers (any :data:`Buffer`; each C-contiguous).
    """

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Buffer]) -> None:
        self.parts = list(parts)

    def __repr__(self) -> str:
        return f"Pieces({len(self.parts)} buffers)"


Frame = Buffer | Pieces
"""A frame to send: a buffer, or :class:`Pieces` sent as one frame."""


def frames_nbytes(frames: Sequence[Frame]) -> int:
    """Bytes of the frames to send (a :class:`Pieces` frame counts its pieces)."""
    return sum(
        sum(_nbytes(p) for p in f.parts) if isinstance(f, Pieces) else _nbytes(f) for f in frames
    )


def _nbytes(buf: Buffer) -> int:
    return int(buf.nbytes) if isinstance(buf, np.ndarray | memoryview) else len(buf)


Alloc = Callable[[int], Any]
"""A receive-buffer provider: ``alloc(nbytes)`` returns a writable buffer of at least ``nbytes``."""


class MsgType(IntEnum):
    """Message types (the ``type`` u16 of the prefix). Values are stable wire constants."""

    # handshake (1-15)
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    AUTH_OK = 4
    AUTH_FAIL = 5
    # session control (16-31)
    DESC = 16
    SUBSCRIBE = 17
    CREDIT = 18
    END_ROUND = 19
    ROUND_DONE = 20
    STATUS = 21
    STATUS_INFO = 22
    SHM_READY = 23
    SHM_FREE = 24
    # data (32-47)
    DATA = 32
    QUERY = 33
    ANSWER = 34
    USER = 35
    # liveness and errors (48-63)
    PING = 48
    PONG = 49
    BYE = 50
    ERROR = 51


_TYPES: dict[int, int] = {int(t): t for t in MsgType}


def message_type(code: int) -> int:
    """The :class:`MsgType` of a type code, or the code itself when it is unknown."""
    return _TYPES.get(code, code)


class Message(NamedTuple):
    """One received message.

    Attributes:
        type: the message type, a :class:`MsgType` when known (a plain ``int`` otherwise).
        header: the decoded msgpack header (``{}`` when the message had none).
        frames: the frames, writable byte memoryviews owned by this message. They share one
            receive buffer per message, each starting at a multiple of :data:`FRAME_ALIGN`
            bytes in it; the buffer itself is 64-byte aligned in memory when the frames
            exceed 64 KiB, malloc-aligned (16 bytes) otherwise: right for every dtype.
    """

    type: int
    header: dict[str, Any]
    frames: list[memoryview]


class Connection(ABC):
    """One peer, message-oriented: ``send`` is thread-safe, ``recv`` has a single reader.

    Attributes:
        peer: ``"host:port"`` of the other side, for logs and errors.
        local: this side's address.
        max_header_bytes: cap on a received header, bytes (default 1 MiB).
        max_frames: cap on a received message's frames (default 4096).
        max_message_bytes: cap on a whole received message, bytes (default 4 GiB).
        bytes_sent, bytes_received, messages_sent, messages_received: counters (of whole
            messages).
        bytes_read: bytes read from the peer so far, the message in progress included: a
            reader whose ``recv`` timed out tells a slow message from a silent peer by it.
    """

    peer: str = "?"
    local: str = "?"
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_frames: int = DEFAULT_MAX_FRAMES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_read: int = 0

    @abstractmethod
    def send(
        self,
        type: int,
        header: Mapping[str, Any] | None = None,
        frames: Sequence[Frame] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        """Send one message; return its size in bytes.

        Args:
            type: the message type (a :class:`MsgType`).
            header: a map of msgpack-native values (``None`` or empty: no header bytes).
            frames: C-contiguous buffers sent as they are, without copies.
            timeout: seconds to wait for the peer to make room (``None``: no limit): for
                other threads' sends to end, then for each stall (a message that keeps
                leaving, however slowly, does not time out).

        Raises:
            ConfigError: a header msgpack cannot encode, a non-contiguous frame, or a message
                over this connection's own caps.
            ConnectionLostError: the connection is closed or broke.
            PantheonTimeoutError: ``timeout`` passed without progress; if part of the message
                had left, the connection is closed.
        """

    @abstractmethod
    def recv(self, timeout: float | None = None, *, alloc: Alloc | None = None) -> Message:
        """Receive the next message.

        Args:
            timeout: seconds to wait (``None``: no limit). On timeout the connection stays
                usable; a message that was partly received is continued by the next call.
            alloc: receive-buffer provider for this message's frames, called once with the
                total size (frames aligned to :data:`FRAME_ALIGN`); default: a new
                ``numpy.empty(nbytes, uint8)``. Use it to recycle buffers.

        Raises:
            PantheonTimeoutError: nothing complete arrived within ``timeout``.
            ConnectionLostError: the peer closed or reset the connection (between messages).
            ProtocolError: garbage, a message over a cap, or one cut short; the connection
                is closed.
        """

    @abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent); a thread blocked in ``recv`` wakes up."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether :meth:`close` was called or the connection broke."""

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.local} -> {self.peer} ({state})>"


class SendTimeout(PantheonTimeoutError):
    """A send that ran past its deadline; ``sent`` bytes of it had already left."""

    def __init__(self, message: str, sent: int) -> None:
        super().__init__(message)
        self.sent = sent


class ByteStream(ABC):
    """A reliable, ordered, bidirectional byte stream (one side of it)."""

    peer: str
    local: str

    @abstractmethod
    def send_all(self, buffers: list[memoryview], deadline: float | None) -> None:
        """Write every byte of ``buffers`` (1-D byte views), in order."""

    @abstractmethod
    def recv_into(self, view: memoryview, deadline: float | None) -> int:
        """Read at least one byte into ``view``; return the count, or 0 at end of stream."""

    @abstractmethod
    def close(self) -> None:
        """Close both directions (idempotent); wakes up a thread blocked in the stream."""


WAIT_SLICE = 1.0
"""Longest single wait of a stream (s); it re-checks whether it was closed in between."""


def wait_slice(deadline: float | None) -> float:
    """Seconds to wait now: up to ``deadline`` (monotonic), at most :data:`WAIT_SLICE`, never
    negative (``None``: no deadline)."""
    if deadline is None:
        return WAIT_SLICE
    return max(0.0, min(deadline - time.monotonic(), WAIT_SLICE))


def byte_view(frame: Any, index: int) -> memoryview:
    """A 1-D unsigned-byte view of a frame (or a piece of one), without copying.

    Raises:
        ConfigError: not a C-contiguous buffer (``index`` names the frame).
    """
    try:
        view = frame if isinstance(frame, memoryview) else memoryview(frame)
        if view.ndim == 1 and view.format == "B":
            return view
        if not view.c_contiguous:
            raise ConfigError(
                f"frame {index} is not C-contiguous; send np.ascontiguousarray(...) of it"
            )
        return view.cast("B")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        if isinstance(frame, np.ndarray) and frame.flags.c_contiguous:
            return memoryview(frame.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        raise ConfigError(
            f"frame {index} is a {type(frame).__name__}, which is not a C-contiguous buffer; "
            "frames must be bytes, bytearray, memoryview or numpy arrays"
        ) from None
