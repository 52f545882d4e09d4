"""A live, authenticated connection with heartbeats: the common ground of both online ends.

A :class:`Session` owns one :class:`~pantheon._wire.Connection`. Its reader thread hands
every message but heartbeats to ``on_message``; its heartbeat thread sends ``PING`` whenever
nothing else was sent for ``heartbeat_interval`` seconds. A peer from which nothing arrives
for ``heartbeat_timeout`` seconds (dead, frozen, or cut off) is declared lost: the session
closes and ``on_close`` receives a :class:`~pantheon.ConnectionLostError`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import (
    ConfigError,
    ConnectionLostError,
    PantheonError,
    PantheonTimeoutError,
    ProtocolError,
)
from .core import DEFAULT_MAX_HEADER_BYTES, Connection, Message, MsgType
from .values import decode_value, encode_value

__all__ = [
    "USER_INBOX_BYTES",
    "USER_INBOX_MESSAGES",
    "Heartbeat",
    "Session",
    "UserInbox",
    "take_message",
    "user_message",
]

log = logging.getLogger("pantheon")


@dataclass(frozen=True)
class Heartbeat:
    """Liveness settings of a connection.

    Attributes:
        interval: seconds of silence after which a PING is sent (default 1.0).
        timeout: seconds without a byte received after which the peer is declared lost (default 10.0).
    """

    interval: float = 1.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.interval < self.timeout:
            raise PantheonError(
                f"heartbeat interval ({self.interval} s) must be > 0 and below its timeout "
                f"({self.timeout} s)"
            )


class Session:
    """One authenticated connection with its reader and heartbeat threads.

    Args:
        conn: the connection (already authenticated).
        name: how to call the peer in logs and errors (e.g. ``"teacher 0 (127.0.0.1:5000)"``).
        on_message: called in the reader thread with every message except PING/PONG.
        on_close: called once, in the thread that noticed, with the reason (``None`` = closed
            on purpose by this side).
        heartbeat: liveness settings.
        alloc: receive-buffer provider (e.g. a :class:`~pantheon._transport.BufferPool`
            recycling buffers), default: a new buffer per message.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        name: str,
        on_message: Callable[[Session, Message], None],
        on_close: Callable[[Session, BaseException | None], None],
        heartbeat: Heartbeat,
        alloc: Any = None,
    ) -> None:
        self.conn = conn
        self._alloc = alloc
        self.name = name
        self._on_message = on_message
        self._on_close = on_close
        self._heartbeat = heartbeat
        self._closed = threading.Event()
        self._close_lock = threading.Lock()
        self._last_sent = time.monotonic()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"pantheon-read {name}", daemon=True
        )
        self._beater = threading.Thread(
            target=self._beat_loop, name=f"pantheon-beat {name}", daemon=True
        )

    def start(self) -> Session:
        """Start the reader and heartbeat threads."""
        self._reader.start()
        self._beater.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the session is still open."""
        return not self._closed.is_set()

    def wait_closed(self, timeout: float) -> bool:
        """Wait until the session is closed (here, or by the peer: its goodbye, or the end of
        the connection), at most ``timeout`` seconds; whether it is."""
        return self._closed.wait(timeout)

    def send(
        self, type: MsgType, header: Mapping[str, Any] | None = None, frames: Sequence[Any] = ()
    ) -> None:
        """Send one message; a failure closes the session and raises ConnectionLostError."""
        if self._closed.is_set():
            raise ConnectionLostError(f"connection to {self.name} is closed")
        try:
            self.conn.send(type, header or {}, frames, timeout=self._heartbeat.timeout)
        except ConfigError:
            raise  # refused before a byte left (over the wire's caps): the connection is fine
        except (OSError, PantheonError) as exc:
            err = ConnectionLostError(f"lost connection to {self.name} while sending: {exc}")
            self.close(err)
            raise err from exc
        self._last_sent = time.monotonic()

    def close(self, reason: BaseException | None = None) -> None:
        """Close the connection (idempotent); ``on_close`` is called once."""
        with self._close_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        try:
            self.conn.close()
        finally:
            self._on_close(self, reason)

    # -- threads --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        read = self.conn.bytes_read
        while not self._closed.is_set():
            try:
                msg = self.conn.recv(timeout=self._heartbeat.timeout, alloc=self._alloc)
            except PantheonTimeoutError:
                if self.conn.bytes_read != read:  # a message still coming: the peer is alive
                    read = self.conn.bytes_read
                    continue
                self.close(
                    ConnectionLostError(
                        f"{self.name} sent nothing for {self._heartbeat.timeout:g} s (no heartbeat): "
                        "it is dead, frozen or cut off"
                    )
                )
                return
            except ProtocolError as exc:
                log.warning("closing connection to %s: %s", self.name, exc)
                self.close(exc)
                return
            except (OSError, PantheonError) as exc:
                if not self._closed.is_set():
                    self.close(ConnectionLostError(f"lost connection to {self.name}: {exc}"))
                return
            read = self.conn.bytes_read
            if msg.type in (MsgType.PING, MsgType.PONG):
                continue
            try:
                self._on_message(self, msg)
                if msg.type == MsgType.BYE:
                    self.close(ConnectionLostError(f"{self.name} closed the connection"))
                    return
            except ProtocolError as exc:
                log.warning("closing connection to %s: %s", self.name, exc)
                self.close(exc)
                return
            except Exception as exc:  # a bug in a handler must not leave a silent dead reader
                log.exception("error handling a message from %s", self.name)
                self.close(exc)
                return

    def _beat_loop(self) -> None:
        interval = self._heartbeat.interval
        while not self._closed.wait(interval / 2):
            if time.monotonic() - self._last_sent >= interval:
                try:
                    self.send(MsgType.PING)
                except ConnectionLostError:
                    return


def take_message(inbox: queue.Queue[Any], timeout: float, what: str) -> Any:
    """The next user message of ``inbox``; :class:`PantheonTimeoutError` naming ``what`` after
    ``timeout`` seconds."""
    try:
        return inbox.get(timeout=timeout)
    except queue.Empty:
        raise PantheonTimeoutError(f"{what} sent no message within {timeout:g} s") from None


USER_INBOX_MESSAGES = 1024
"""Unread user messages (``Teacher.send`` / ``Student.send``) a side holds at most."""
USER_INBOX_BYTES = 256 << 20
"""Bytes of unread user messages a side holds at most (256 MiB; one message always fits)."""


USER_VALUE_BYTES = DEFAULT_MAX_HEADER_BYTES - 1024
"""Bytes of a user message outside its arrays at most (the rest of the header's 1 MiB cap)."""


def user_message(data: Any) -> tuple[dict[str, Any], list[Any]]:
    """The header and frames of a USER message carrying ``data``.

    Raises:
        ConfigError: a value of a type that cannot be sent, or more than
            :data:`USER_VALUE_BYTES` outside numpy arrays (arrays travel as frames, outside
            the header, up to the message's 4 GiB cap).
    """
    value, frames = encode_value(data)
    if len(value) > USER_VALUE_BYTES:
        raise ConfigError(
            f"a user message may hold at most {USER_VALUE_BYTES} bytes outside numpy arrays, "
            f"this one holds {len(value)}; send big data as numpy arrays (bytes as "
            "np.frombuffer(data, np.uint8)), which travel outside the message's header"
        )
    return {"value": value}, frames


class UserInbox:
    """Unread user messages of one peer, bounded in count and in bytes.

    A peer that sends more than the other side's program takes (a flood) is refused with a
    :class:`~pantheon.ProtocolError` that closes its connection, instead of growing memory:
    at most ``messages`` messages and ``nbytes`` bytes wait (a single message of any size
    within the wire's caps is still taken when nothing else waits).

    Args:
        what: who sends, for messages (``"the student (Teacher.recv)"``).
        messages: messages waiting at most (default :data:`USER_INBOX_MESSAGES`).
        nbytes: bytes waiting at most (default :data:`USER_INBOX_BYTES`).
    """

    def __init__(self, what: str, *, messages: int | None = None, nbytes: int | None = None):
        self._what = what
        self._max = USER_INBOX_MESSAGES if messages is None else messages
        self._max_bytes = USER_INBOX_BYTES if nbytes is None else nbytes
        self._items: queue.Queue[tuple[Any, int]] = queue.Queue()
        self._lock = threading.Lock()
        self._bytes = 0

    def empty(self) -> bool:
        """Whether no message waits."""
        return self._items.empty()

    def put(self, msg: Message) -> None:
        """Decode ``msg``'s value and keep it.

        Raises:
            ProtocolError: a malformed value, or the inbox is full (the sender is flooding).
        """
        payload = msg.header.get("value")
        if not isinstance(payload, bytes):
            raise ProtocolError(
                f"{self._what}: a USER message's 'value' must be msgpack bytes, got "
                f"{type(payload).__name__}"
            )
        size = len(payload) + sum(memoryview(f).nbytes for f in msg.frames)
        with self._lock:
            count = self._items.qsize()
            if count >= self._max or (count and self._bytes + size > self._max_bytes):
                raise ProtocolError(
                    f"{self._what}: {count} messages ({self._bytes} bytes) are waiting to be "
                    f"received, at most {self._max} messages and {self._max_bytes} bytes may "
                    "wait; the sender sends faster than the other side calls recv()"
                )
            value = decode_value(msg.header.get("value"), msg.frames)
            self._bytes += size
            self._items.put((value, size))

    def get(self, timeout: float) -> Any:
        """The next message; :class:`PantheonTimeoutError` after ``timeout`` seconds."""
        value, size = take_message(self._items, timeout, self._what)
        with self._lock:
            self._bytes -= size
        return value
