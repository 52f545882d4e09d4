"""An in-memory transport: a bounded byte pipe between two threads, with the wire's framing.

Same semantics as TCP (bounded buffering, end of stream, a closed peer), for tests and for a
teacher and a student in one process.
"""

from __future__ import annotations

import collections
import threading
import time

from .._errors import ConnectionLostError, PantheonTimeoutError
from .core import ByteStream, SendTimeout, wait_slice
from .framing import StreamConnection

__all__ = ["InprocConnection", "PipeStream", "inproc_pair", "pipe_pair"]


class _Pipe:
    """One direction of an in-memory stream: a bounded FIFO of byte chunks."""

    def __init__(self, capacity: int) -> None:
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.size = 0
        self.capacity = capacity
        self.eof = False  # the writer closed
        self.broken = False  # the reader closed
        self.cond = threading.Condition()


class PipeStream(ByteStream):
    """One end of an in-memory byte stream with bounded buffering (see :func:`pipe_pair`)."""

    def __init__(self, rx: _Pipe, tx: _Pipe, name: str, peer: str) -> None:
        self._rx = rx
        self._tx = tx
        self.local = name
        self.peer = peer
        self._closed = False

    def send_all(self, buffers: list[memoryview], deadline: float | None) -> None:
        """Copy the buffers into the pipe, waiting for room when it is full (``deadline``
        bounds a stall: each time bytes go in, the time left starts again)."""
        tx = self._tx
        sent = 0
        span = None if deadline is None else deadline - time.monotonic()
        with tx.cond:
            for buf in buffers:
                data = buf.cast("B") if buf.format != "B" else buf
                pos = 0
                while pos < data.nbytes:
                    if self._closed:
                        raise ConnectionLostError(
                            f"the connection to {self.peer} was closed by this side"
                        )
                    if tx.broken:
                        raise ConnectionLostError(
                            f"lost the connection to {self.peer}: peer closed"
                        )
                    room = tx.capacity - tx.size
                    if room <= 0:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise SendTimeout(f"timed out sending to {self.peer}", sent)
                        tx.cond.wait(wait_slice(deadline))
                        continue
                    piece = memoryview(bytes(data[pos : pos + room]))
                    tx.chunks.append(piece)
                    tx.size += piece.nbytes
                    pos += piece.nbytes
                    sent += piece.nbytes
                    if span is not None:
                        deadline = time.monotonic() + span
                    tx.cond.notify_all()

    def recv_into(self, view: memoryview, deadline: float | None) -> int:
        """Copy buffered bytes into ``view`` (at least one, waiting for them)."""
        rx = self._rx
        with rx.cond:
            while not rx.chunks:
                if self._closed:
                    raise ConnectionLostError(
                        f"the connection to {self.peer} was closed by this side"
                    )
                if rx.eof:
                    return 0
                if deadline is not None and time.monotonic() >= deadline:
                    raise PantheonTimeoutError(f"timed out waiting for {self.peer}")
                rx.cond.wait(wait_slice(deadline))
            want = view.nbytes
            got = 0
            while rx.chunks and got < want:
                head = rx.chunks[0]
                k = min(head.nbytes, want - got)
                view[got : got + k] = head[:k]
                got += k
                if k == head.nbytes:
                    rx.chunks.popleft()
                else:
                    rx.chunks[0] = head[k:]
            rx.size -= got
            rx.cond.notify_all()
            return got

    def close(self) -> None:
        """Close both directions: the peer reads end of stream, its sends fail."""
        if self._closed:
            return
        self._closed = True
        for pipe, attr in ((self._tx, "eof"), (self._rx, "broken")):
            with pipe.cond:
                setattr(pipe, attr, True)
                pipe.cond.notify_all()


_pipe_counter = 0
_pipe_lock = threading.Lock()


def pipe_pair(capacity: int = 4 << 20) -> tuple[PipeStream, PipeStream]:
    """Two connected in-memory streams; each direction buffers up to ``capacity`` bytes (4 MiB)."""
    global _pipe_counter
    with _pipe_lock:
        _pipe_counter += 1
        n = _pipe_counter
    ab, ba = _Pipe(capacity), _Pipe(capacity)
    a = PipeStream(ba, ab, f"inproc:{n}a", f"inproc:{n}b")
    b = PipeStream(ab, ba, f"inproc:{n}b", f"inproc:{n}a")
    return a, b


class InprocConnection(StreamConnection):
    """One end of an in-memory connection (see :func:`inproc_pair`); same semantics as TCP."""

    def __init__(self, stream: PipeStream) -> None:
        super().__init__(stream)

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes to the stream, bypassing the framing (for tests of bad input)."""
        self._stream.send_all([memoryview(data)], None)


def inproc_pair(capacity: int = 4 << 20) -> tuple[InprocConnection, InprocConnection]:
    """Two connected in-memory connections; each direction buffers ``capacity`` bytes (4 MiB)."""
    a, b = pipe_pair(capacity)
    return InprocConnection(a), InprocConnection(b)
