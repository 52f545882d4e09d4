"""One address of an online teacher, as the student holds it: a session, reconnected when lost."""

from __future__ import annotations

import collections
import threading
from typing import Any, Protocol

from .._errors import ClosedError, ConnectionLostError, PantheonTimeoutError, TeacherError
from .._util import Deadline
from .._wire import BufferPool, Connection, Heartbeat, Message, Session, client_handshake, connect

__all__ = ["Link", "LinkOwner"]


class LinkOwner(Protocol):
    """What a link needs from the source that owns it."""

    name: str
    token: bytes | None
    hello: dict[str, Any]
    credits: int
    heartbeat: Heartbeat
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

    def _handshake(self, conn: Connection, deadline: Deadline) -> None:
        src = self.source
        client_handshake(
            conn,
            src.token,
            timeout=max(0.1, deadline.cap(src.heartbeat.timeout)),
            hello=src.hello,
        )

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
            conn = connect(
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
        session = Session(
            conn,
            name=f"{src.name} at {self.address}",
            on_message=lambda s, m: src.on_message(self, s, m),
            on_close=lambda s, r: src.on_close(self, s, r),
            heartbeat=src.heartbeat,
            alloc=BufferPool(max_buffers=2 * src.credits + 4),
        )
        self.session = session
        session.start()
        return session
