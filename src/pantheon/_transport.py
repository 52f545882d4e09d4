"""The transports under the wire framing: TCP connections, listeners and an in-memory pipe.

The byte streams (:class:`SocketStream`, :class:`PipeStream`) implement
:class:`~pantheon._wire.ByteStream`; the connections (:class:`TcpConnection`,
:class:`InprocConnection`) put :mod:`pantheon._wire`'s framing on top of them. Waits take a
deadline (``time.monotonic()`` seconds, ``None`` = no limit) and never busy-spin: sockets are
non-blocking and waits use ``poll`` (``select`` where ``poll`` is missing), in slices of at
most one second so that a closed connection is noticed.

Errors: a peer that closed or reset the connection -> :class:`~pantheon.ConnectionLostError`;
a deadline that passed -> :class:`~pantheon._wire.SendTimeout` (sending) or
:class:`~pantheon.PantheonTimeoutError` (receiving).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import select
import socket
import sys
import threading
import time
from types import TracebackType
from typing import Any

import numpy as np

from ._errors import ClosedError, ConfigError, ConnectionLostError, PantheonTimeoutError
from ._wire import ByteStream, SendTimeout, StreamConnection

__all__ = [
    "BufferPool",
    "InprocConnection",
    "Listener",
    "PipeStream",
    "SocketStream",
    "TcpConnection",
    "connect",
    "connect_socket",
    "format_address",
    "inproc_pair",
    "listen",
    "listen_socket",
    "parse_address",
    "pipe_pair",
]

_IOV_MAX = 1024
"""Most buffers passed to one ``sendmsg`` call (Linux's IOV_MAX)."""
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")  # not on Windows: one send per buffer
_WAIT_SLICE = 1.0
"""Longest single wait (s); the stream re-checks whether it was closed in between."""


def _remaining(deadline: float | None) -> float:
    """Seconds to wait now: up to the deadline, at most :data:`_WAIT_SLICE`, never negative."""
    if deadline is None:
        return _WAIT_SLICE
    return max(0.0, min(deadline - time.monotonic(), _WAIT_SLICE))


class SocketStream(ByteStream):
    """A connected TCP socket, switched to non-blocking mode with ``TCP_NODELAY`` set.

    Args:
        sock: the connected socket; the stream owns it from now on.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.peer = _sockname(sock, peer=True)
        self.local = _sockname(sock, peer=False)
        fd = sock.fileno()
        self._rpoll: select.poll | None = None
        self._wpoll: select.poll | None = None
        if hasattr(select, "poll"):
            self._rpoll = select.poll()
            self._rpoll.register(fd, select.POLLIN)
            self._wpoll = select.poll()
            self._wpoll.register(fd, select.POLLOUT)

    def _wait(self, writing: bool, deadline: float | None) -> None:
        """Wait until the socket is ready (or a slice passes); raise if past the deadline."""
        if self._closed:
            raise ConnectionLostError(f"the connection to {self.peer} was closed by this side")
        if deadline is not None and time.monotonic() >= deadline:
            raise PantheonTimeoutError(f"timed out waiting for {self.peer}")
        seconds = _remaining(deadline)
        poller = self._wpoll if writing else self._rpoll
        if poller is not None:
            poller.poll(int(seconds * 1000) + 1)
        elif writing:
            select.select([], [self._sock], [], seconds)
        else:
            select.select([self._sock], [], [], seconds)

    def _lost(self, exc: OSError) -> ConnectionLostError:
        if self._closed:
            return ConnectionLostError(f"the connection to {self.peer} was closed by this side")
        return ConnectionLostError(f"lost the connection to {self.peer}: {exc}")

    def send_all(self, buffers: list[memoryview], deadline: float | None) -> None:
        """Write all buffers with ``sendmsg``, looping on partial sends (no concatenation)."""
        sock = self._sock
        bufs = buffers
        i = 0
        sent = 0
        n_bufs = len(bufs)
        while i < n_bufs:
            batch = bufs[i : i + _IOV_MAX]
            try:
                n = sock.sendmsg(batch) if _HAS_SENDMSG else sock.send(batch[0])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                raise self._lost(exc) from None
            if n:
                sent += n
                start = i
                while i < n_bufs and n >= bufs[i].nbytes:
                    n -= bufs[i].nbytes
                    i += 1
                if n:
                    if bufs is buffers:
                        bufs = list(buffers)  # never modify the caller's list
                    bufs[i] = bufs[i][n:]
                elif i >= start + (len(batch) if _HAS_SENDMSG else 1):
                    continue  # all that was asked for left: go on at once
            try:  # the kernel's buffer is full: wait until the peer reads
                self._wait(True, deadline)
            except PantheonTimeoutError:
                raise SendTimeout(f"timed out sending to {self.peer}", sent) from None

    def recv_into(self, view: memoryview, deadline: float | None) -> int:
        """Read what is available into ``view`` (waiting for at least one byte)."""
        sock = self._sock
        while True:
            try:
                return sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise self._lost(exc) from None
            self._wait(False, deadline)

    def close(self) -> None:
        """Shut the socket down (waking any waiting thread) and close it."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _sockname(sock: socket.socket, *, peer: bool) -> str:
    try:
        addr = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return "?"
    if isinstance(addr, tuple):
        return format_address(str(addr[0]), int(addr[1]))
    return str(addr)


# -- in-memory pipe ------------------------------------------------------------------------


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
        """Copy the buffers into the pipe, waiting for room when it is full."""
        tx = self._tx
        sent = 0
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
                        tx.cond.wait(_remaining(deadline))
                        continue
                    piece = memoryview(bytes(data[pos : pos + room]))
                    tx.chunks.append(piece)
                    tx.size += piece.nbytes
                    pos += piece.nbytes
                    sent += piece.nbytes
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
                rx.cond.wait(_remaining(deadline))
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


# -- addresses and sockets -----------------------------------------------------------------


def format_address(host: str, port: int) -> str:
    """``"host:port"``, with IPv6 hosts in brackets (``"[::1]:5000"``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"``, ``"tcp://host:port"`` or ``"[v6]:port"`` into ``(host, port)``.

    Raises:
        ConfigError: not a string of that form, or a port outside 0..65535.
    """
    if not isinstance(address, str):
        raise ConfigError(
            f"an address must be a string 'host:port', got {type(address).__name__} {address!r}"
        )
    text = address.strip()
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address without brackets: ambiguous
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f"invalid address {address!r}: expected 'host:port' (e.g. '127.0.0.1:5000', "
            "'tcp://teacher-0:5000' or '[::1]:5000') with a port in 0..65535"
        )
    return host, int(port_text)


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket bound to ``(host, port)`` (``SO_REUSEADDR`` on POSIX).

    Raises:
        ConfigError: the address cannot be bound (in use, not local, no permission).
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_REUSEADDR") and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {format_address(host, port)}: {exc}; choose another port "
            "(0 picks a free one) or a host name of this machine"
        ) from None
    return sock


def connect_socket(host: str, port: int, timeout: float) -> socket.socket:
    """One TCP connection attempt, waiting at most ``timeout`` seconds.

    Raises:
        ConnectionLostError: refused or unreachable.
        PantheonTimeoutError: no answer within ``timeout``.
    """
    where = format_address(host, port)
    try:
        return socket.create_connection((host, port), timeout=max(timeout, 0.001))
    except TimeoutError:
        raise PantheonTimeoutError(f"connecting to {where} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise ConnectionLostError(f"cannot connect to {where}: {exc}") from None


# -- connections -----------------------------------------------------------------------


class TcpConnection(StreamConnection):
    """A connection over a TCP socket (``TCP_NODELAY``; ``sendmsg`` out, ``recv_into`` in).

    Args:
        sock: a connected socket; the connection owns it.
    """

    def __init__(self, sock: Any) -> None:
        super().__init__(SocketStream(sock))


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


class Listener:
    """A listening TCP socket that hands out :class:`TcpConnection` objects.

    Attributes:
        address: ``"host:port"`` with the real port (useful after binding port 0).
    """

    def __init__(self, host: str, port: int, *, backlog: int = 16) -> None:
        self._sock = listen_socket(host, port, backlog)
        self.address = format_address(host, self._sock.getsockname()[1])
        self._closed = False

    def accept(self, timeout: float | None = None) -> TcpConnection:
        """Wait for the next connection (``timeout`` seconds, ``None``: no limit).

        Raises:
            PantheonTimeoutError: nobody connected within ``timeout``.
            ClosedError: the listener is (or was meanwhile) closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise ClosedError(f"the listener on {self.address} is closed")
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                raise PantheonTimeoutError(f"no connection to {self.address} within {timeout:g} s")
            try:
                self._sock.settimeout(wait)
                sock, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._closed:
                    raise ClosedError(f"the listener on {self.address} is closed") from None
                raise ConnectionLostError(f"accepting on {self.address} failed: {exc}") from None
            return TcpConnection(sock)

    def close(self) -> None:
        """Stop listening (idempotent); a thread blocked in :meth:`accept` gets ClosedError."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.address}{' (closed)' if self._closed else ''}>"


def listen(host: str = "127.0.0.1", port: int = 0, *, backlog: int = 16) -> Listener:
    """Listen for TCP connections on ``host:port`` (port 0: a free port, see ``.address``).

    Raises:
        ConfigError: the address cannot be bound.
    """
    return Listener(host, port, backlog=backlog)


def connect(address: str, *, timeout: float, retry: bool = True) -> TcpConnection:
    """Connect to ``"host:port"`` (or ``"tcp://host:port"``).

    Args:
        address: where the peer listens.
        timeout: seconds to keep trying.
        retry: retry refused or unreachable attempts (backoff 0.05 s doubling to 0.5 s) until
            ``timeout`` passes, so a peer may start listening a little later (default True).

    Raises:
        ConfigError: a malformed address.
        ConnectionLostError: refused or unreachable until ``timeout`` passed.
        PantheonTimeoutError: an attempt got no answer within ``timeout``.
    """
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        remaining = deadline - time.monotonic()
        try:
            return TcpConnection(connect_socket(host, port, remaining))
        except PantheonTimeoutError:
            raise PantheonTimeoutError(
                f"connecting to {address} got no answer within {timeout:g} s; check the "
                "address and that no firewall drops the connection"
            ) from None
        except ConnectionLostError as exc:
            if not retry or time.monotonic() + delay >= deadline:
                raise ConnectionLostError(
                    f"{exc} (tried for {timeout:g} s); check that the peer is running and "
                    "listening there"
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


# -- receive buffers -----------------------------------------------------------------------


class BufferPool:
    """Receive buffers recycled once nothing references them: an ``alloc`` for ``recv``.

    ``conn.recv(alloc=pool)`` takes a buffer from the pool: one whose previous message (its
    frames and every array decoded from them) is no longer referenced anywhere, or a new one
    (at least ``min_bytes``, aligned to 64 bytes). Reusing buffers avoids the page faults
    of fresh large allocations. The pool remembers at most ``max_buffers`` buffers; when all
    are in use it forgets the oldest (which is freed normally when its message is).

    Whether a buffer is free is read from its reference count, so the pool only recycles on
    CPython with the GIL; elsewhere it allocates a new buffer every time.

    Args:
        max_buffers: buffers remembered (default 8).
        min_bytes: smallest buffer allocated, bytes (default 64 KiB).
    """

    def __init__(self, max_buffers: int = 8, min_bytes: int = 64 * 1024) -> None:
        if max_buffers < 1 or min_bytes < 0:
            raise ConfigError(
                f"BufferPool needs max_buffers >= 1 and min_bytes >= 0, got {max_buffers}, "
                f"{min_bytes}"
            )
        self.max_buffers = max_buffers
        self.min_bytes = min_bytes
        self._bufs: list[np.ndarray] = []
        self._idle_refs: tuple[int, int] | None = None  # (buffer, allocation) refs when idle
        self._enabled = (
            sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()
        )
        self.allocated = 0  # buffers created (counter, for tests and statistics)

    def _refs(self, i: int) -> tuple[int, int]:
        # numpy collapses view chains: a slice of a frame refers to the allocation (``base``),
        # a memoryview or np.frombuffer refers to the buffer itself; both must be unreferenced.
        buf = self._bufs[i]
        return sys.getrefcount(buf), sys.getrefcount(buf.base)

    def __call__(self, nbytes: int) -> np.ndarray:
        """A writable, 64-byte aligned uint8 buffer of at least ``nbytes`` bytes."""
        bufs = self._bufs
        if self._enabled:
            for i in range(len(bufs)):
                if bufs[i].nbytes >= nbytes and self._refs(i) == self._idle_refs:
                    bufs.append(bufs.pop(i))  # most recently used last
                    return bufs[-1]
        size = max(nbytes, self.min_bytes)
        raw = np.empty(size + 63, dtype=np.uint8)
        skip = -raw.ctypes.data % 64
        buf = raw[skip : skip + size]
        self.allocated += 1
        if self._enabled:
            if len(bufs) >= self.max_buffers:
                bufs.pop(0)
            bufs.append(buf)
            del buf, raw
            if self._idle_refs is None:
                self._idle_refs = self._refs(len(bufs) - 1)
            return bufs[-1]
        return buf
