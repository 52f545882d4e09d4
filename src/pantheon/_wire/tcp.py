"""The TCP transport: non-blocking sockets under the wire's framing, listeners, addresses.

:class:`SocketStream` implements :class:`~pantheon._wire.core.ByteStream`; :class:`TcpConnection`
puts the framing on top of it. Waits take a deadline (``time.monotonic()`` seconds, ``None`` =
no limit) and never busy-spin: sockets are non-blocking and waits use ``poll`` (``select``
where ``poll`` is missing), in slices of at most one second so that a closed connection is
noticed.

Errors: a peer that closed or reset the connection -> :class:`~pantheon.ConnectionLostError`;
a deadline that passed -> :class:`~pantheon._wire.core.SendTimeout` (sending) or
:class:`~pantheon.PantheonTimeoutError` (receiving).
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .._errors import ClosedError, ConfigError, ConnectionLostError, PantheonTimeoutError
from .._util import Backoff, Deadline
from .core import WAIT_SLICE, ByteStream, SendTimeout, wait_slice
from .framing import StreamConnection

__all__ = [
    "Listener",
    "Setup",
    "SocketStream",
    "TcpConnection",
    "connect",
    "connect_socket",
    "format_address",
    "listen",
    "listen_socket",
    "parse_address",
    "same_host",
]

_IOV_MAX = 1024
"""Most buffers passed to one ``sendmsg`` call (Linux's IOV_MAX)."""
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")  # not on Windows: one send per buffer
LOOPBACK_SNDBUF = 512 * 1024
"""``SO_SNDBUF`` (bytes; Linux doubles it, so 1 MiB in effect) of a connection whose two ends
are one host. The kernel's autotuned send buffer (up to ``tcp_wmem``'s 4 MiB) lets that much
data wait in socket buffers whose pages then come from beyond the cache for both copies;
bounded, 1 MiB batches crossed the loopback ~1.3x faster (``docs/design.md``). Connections to
other hosts keep the kernel's autotuning, which their bandwidth-delay product needs."""


class SocketStream(ByteStream):
    """A connected TCP socket, switched to non-blocking mode with ``TCP_NODELAY`` set (and a
    send buffer of :data:`LOOPBACK_SNDBUF` when both ends are this host).

    Args:
        sock: the connected socket; the stream owns it from now on.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False
        sock.setblocking(False)
        self.peer = _sockname(sock, peer=True)
        self.local = _sockname(sock, peer=False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if same_host(self.peer, self.local):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LOOPBACK_SNDBUF)
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
        seconds = wait_slice(deadline)
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
        """Write all buffers with ``sendmsg``, looping on partial sends (no concatenation).

        ``deadline`` bounds a stall, not the whole send: each time bytes leave, the time left
        starts again (a big message to a slow but reading peer goes on)."""
        sock = self._sock
        bufs = buffers
        i = 0
        sent = 0
        n_bufs = len(bufs)
        span = None if deadline is None else deadline - time.monotonic()
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
                if span is not None:
                    deadline = time.monotonic() + span
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


def same_host(peer: str, local: str) -> bool:
    """Whether a connection's two ``host:port`` addresses (its ``peer`` and ``local``) are one
    host: a loopback peer (``::ffff:127.0.0.1`` too), or the peer at this side's own address."""
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or host == local.rsplit(":", 1)[0].strip("[]")


def _sockname(sock: socket.socket, *, peer: bool) -> str:
    try:
        addr = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return "?"
    if isinstance(addr, tuple):
        return format_address(str(addr[0]), int(addr[1]))
    return str(addr)


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


class TcpConnection(StreamConnection):
    """A connection over a TCP socket (``TCP_NODELAY``; ``sendmsg`` out, ``recv_into`` in).

    Args:
        sock: a connected socket; the connection owns it.
    """

    def __init__(self, sock: Any) -> None:
        super().__init__(SocketStream(sock))


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
        deadline = Deadline(timeout)
        while True:
            if self._closed:
                raise ClosedError(f"the listener on {self.address} is closed")
            wait = deadline.cap(WAIT_SLICE)
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


Setup = Callable[["TcpConnection", Deadline], object]
"""Called with each new connection and the connect deadline (e.g. the token handshake)."""


def connect(
    address: str,
    *,
    timeout: float,
    retry: bool = True,
    setup: Setup | None = None,
    stop: threading.Event | None = None,
) -> TcpConnection:
    """Connect to ``"host:port"`` (or ``"tcp://host:port"``): the one connect-retry loop.

    Args:
        address: where the peer listens.
        timeout: seconds to keep trying, all attempts together.
        retry: retry refused or unreachable attempts (back-off 0.05 s doubling to 0.5 s) until
            ``timeout`` passes, so a peer may start listening a little later (default True).
        setup: called with each new connection and the deadline before it is returned (the
            token handshake). What reconnecting can mend (the peer went away,
            :class:`~pantheon.ConnectionLostError`; it did not answer in time) is retried like
            a refused connection; anything else (a wrong token, another protocol version) is
            raised at once. The connection is closed when ``setup`` raises.
        stop: retries end early once this event is set (the caller is closing).

    Raises:
        ConfigError: a malformed address.
        ConnectionLostError: refused, unreachable or lost during ``setup`` until ``timeout``
            passed (or ``stop`` was set).
        PantheonTimeoutError: a connection attempt got no answer within ``timeout``.
        Whatever ``setup`` raises that retrying cannot mend.
    """
    host, port = parse_address(address)
    deadline = Deadline(timeout)
    backoff = Backoff()
    while True:
        try:
            conn = TcpConnection(connect_socket(host, port, deadline.left()))
        except PantheonTimeoutError:
            raise PantheonTimeoutError(
                f"connecting to {address} got no answer within {timeout:g} s; check the "
                "address and that no firewall drops the connection"
            ) from None
        except ConnectionLostError as exc:
            last = str(exc)  # words, not the exception: its traceback would hold our callers
        else:
            if setup is None:
                return conn
            try:
                setup(conn, deadline)
                return conn
            except (ConnectionLostError, PantheonTimeoutError) as exc:
                conn.close()
                last = str(exc)
            except BaseException:
                conn.close()
                raise
        if not retry or not backoff.sleep(deadline, stop):
            raise ConnectionLostError(
                f"{last} (tried for {timeout:g} s); check that the peer is running and "
                "listening there"
            ) from None
