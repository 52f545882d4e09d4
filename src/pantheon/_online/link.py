"""One address of an online teacher, as the student holds it: a session, reconnected when lost."""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Protocol

from .._errors import (
    ClosedError,
    ConfigError,
    ConnectionLostError,
    PantheonTimeoutError,
    TeacherError,
)
from .._util import Deadline
from .._wire import (
    BufferPool,
    Connection,
    Heartbeat,
    Message,
    Ring,
    Session,
    ShmReceiver,
    client_handshake,
    connect,
    is_local,
    read_ready,
    shm_unavailable,
)

__all__ = ["TRANSPORTS", "Link", "LinkOwner", "check_transport"]

log = logging.getLogger("pantheon")

TRANSPORTS = ("auto", "tcp", "shm")


def check_transport(transport: object) -> str:
    """``transport`` if it names one of :data:`TRANSPORTS`, else a ConfigError."""
    if transport not in TRANSPORTS:
        raise ConfigError(
            f"transport must be one of {list(TRANSPORTS)} (how online knowledge travels: "
            f"shared memory on one host or TCP), got {transport!r}"
        )
    return str(transport)


"""How a student gets its knowledge: ``auto`` (shared memory with a teacher on the same host,
TCP otherwise), ``tcp`` (always the socket) or ``shm`` (shared memory, or an error)."""


class LinkOwner(Protocol):
    """What a link needs from the source that owns it."""

    name: str
    token: bytes | None
    hello: dict[str, Any]
    credits: int
    heartbeat: Heartbeat
    transport: str
    stopped: threading.Event

    def on_message(self, link: Link, session: Session, msg: Message) -> None: ...

    def on_close(self, link: Link, session: Session, reason: BaseException | None) -> None: ...


class Link:
    """One address of a teacher: its session, reconnected in the background when lost."""

    def __init__(self, source: LinkOwner, address: str, index: int = 0) -> None:
        self.source = source
        self.address = address
        self.index = index
        self.session: Session | None = None
        self.pending: collections.deque[Any] = collections.deque()  # messages to send, in order
        self.send_lock = threading.Lock()
        self.ring: Ring | None = None  # the shared-memory ring of the current connection
        self._shm: ShmReceiver | None = None
        self._shm_before = 0  # messages that came through the rings of earlier connections
        self.fallback = ""  # why the current connection is TCP only ("": asked for, or remote)

    @property
    def transport(self) -> str:
        """``"shm"`` when the current connection carries knowledge through shared memory."""
        return "shm" if self._shm is not None and not self._shm.closed else "tcp"

    @property
    def described(self) -> str:
        """How knowledge travels on the current connection, in words (for the log)."""
        if self.transport == "shm":
            return "knowledge through shared memory"
        return f"knowledge over TCP: {self.fallback}" if self.fallback else "knowledge over TCP"

    @property
    def shm_messages(self) -> int:
        """Messages that came through shared memory, over all connections of this link."""
        return self._shm_before + (self._shm.received if self._shm is not None else 0)

    def where(self, several: bool) -> str:
        """`` to ADDRESS`` for a teacher of ``several`` replicas (the name holds a single
        one)."""
        return f" to {self.address}" if several else ""

    def why_down(self, reason: BaseException | None, several: bool) -> str:
        """Why this link went down, naming neither the teacher nor a single address again
        (the log line starts with the teacher's name)."""
        where = self.where(several)
        if reason is None:
            return f"lost the connection{where}"
        session = f"{self.source.name} at {self.address}"
        text = str(reason).removeprefix(f"lost connection to {session}: ")
        text = text.replace(session, "the teacher")
        text = text.replace(f" to {self.address}", where)
        return text if several else text.replace(self.address, "the teacher")

    def _offer_ring(self, conn: Connection) -> Ring | None:
        """A fresh ring to offer on this connection, or None (TCP only)."""
        mode = self.source.transport
        if mode == "tcp" or (mode == "auto" and not is_local(conn)):
            return None
        why = shm_unavailable()
        if why is None:
            try:
                return Ring()
            except OSError as exc:
                why = f"could not create shared memory ({exc})"
        if mode == "shm":
            raise ConfigError(f"{self.source.name}: transport='shm' but {why}; use 'auto'")
        self.fallback = why
        return None

    def _handshake(self, conn: Connection, deadline: Deadline) -> None:
        src = self.source
        timeout = max(0.1, deadline.cap(src.heartbeat.timeout))
        self.fallback = ""
        ring = self._offer_ring(conn)
        hello = src.hello if ring is None else {**src.hello, "shm": ring.offer()}
        try:
            client_handshake(conn, src.token, timeout=timeout, hello=hello)
            ok, why = (False, "") if ring is None else read_ready(conn, timeout)
        except BaseException:
            if ring is not None:
                ring.close()
            raise
        if ring is not None and not ok:
            ring.close()
            ring = None
            if src.transport == "shm":
                raise ConfigError(
                    f"{src.name}: transport='shm' but the teacher at {self.address} cannot use "
                    f"this student's shared memory: {why}; use transport='auto' to fall back "
                    "to TCP"
                )
            self.fallback = why
        self.ring = ring

    def connect(self, deadline: Deadline) -> Session:
        """Connect and authenticate, retrying until ``deadline``; start the session.

        Raises:
            TeacherError: no connection before the deadline (the last error is named).
            AuthenticationError, ProtocolError: a wrong token or another protocol version,
                at once (reconnecting cannot mend them).
        """
        src = self.source
        if src.stopped.is_set():
            raise ClosedError(f"{src.name} is closed")
        try:
            conn: Connection = connect(
                self.address,
                timeout=max(deadline.left(), 0.001),
                setup=self._handshake,
                stop=src.stopped,
            )
        except (ConnectionLostError, PantheonTimeoutError) as exc:
            if src.stopped.is_set():
                raise ClosedError(f"{src.name} is closed") from None
            raise TeacherError(
                f"{src.name}: could not connect to {self.address} within the timeout "
                f"(last error: {exc}); is the teacher running and reachable? Raise "
                "Student(timeout=...) to wait longer"
            ) from None
        if self._shm is not None:
            self._shm_before += self._shm.received
            self._shm = None
        if self.ring is not None:
            conn = self._shm = ShmReceiver(conn, self.ring, send_timeout=src.heartbeat.timeout)
            log.debug("%s: knowledge through shared memory", src.name)
        session = Session(
            conn,
            name=f"{src.name} at {self.address}",
            on_message=lambda s, m: src.on_message(self, s, m),
            on_close=lambda s, r: src.on_close(self, s, r),
            heartbeat=src.heartbeat,
            alloc=BufferPool(max_buffers=2 * src.credits + 4),
        )
        with self.send_lock:  # close() looks at the session under it
            if src.stopped.is_set():  # it closed during the handshake, and saw no session
                session.conn.close()
                raise ClosedError(f"{src.name} is closed")
            self.session = session
        session.start()
        return session
