"""One connected peer of a teacher: its session (reader and heartbeat) and an outbox drained
by a sender thread, so that a slow student never blocks the teacher's other work; the log
lines of its rounds."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ConnectionLostError
from .._util import Deadline, wait_until
from .._wire import Connection, Heartbeat, Message, MsgType, Session
from .fanout import Close
from .messages import Hello, RoundDone, Subscribe

if TYPE_CHECKING:
    from .teacher_machine import TeacherMachine

__all__ = ["Peer", "log_round", "replaced"]

log = logging.getLogger("pantheon")

Outgoing = tuple[int, dict[str, Any], Sequence[Any]]
_Item = Outgoing | Callable[[], Outgoing] | None  # a message, one to build, or None: close


class Peer:
    """A student (or monitor) connected to a teacher.

    Args:
        cid: the connection's number on this teacher.
        conn: the authenticated connection.
        hello: what the client said of itself.
        on_message / on_close: the session's callbacks (reader thread).
        heartbeat: liveness settings.
        max_outbox: messages queued for sending at most; beyond, the peer is too slow or
            stuck and its connection is closed (credits keep a well-behaved student far below).
    """

    def __init__(
        self,
        cid: int,
        conn: Connection,
        hello: Hello,
        *,
        on_message: Callable[[Peer, Message], None],
        on_close: Callable[[Peer, BaseException | None], None],
        heartbeat: Heartbeat,
        max_outbox: int = 4096,
    ) -> None:
        self.cid = cid
        self.hello = hello
        self.peer = conn.peer
        who = "monitor" if hello.role == "monitor" else f"{hello.group!r} rank {hello.rank}"
        self.name = f"student {who} ({conn.peer})"
        self.close_reason = ""  # why the teacher closed it (logged once it is gone)
        self._outbox: collections.deque[_Item] = collections.deque()
        self._max_outbox = max_outbox
        self._cond = threading.Condition()
        self._closing = False
        self.session = Session(
            conn,
            name=self.name,
            on_message=lambda _s, m: on_message(self, m),
            on_close=lambda _s, r: self._closed(on_close, r),
            heartbeat=heartbeat,
        )
        self._sender = threading.Thread(
            target=self._send_loop, name=f"pantheon-send {self.name}", daemon=True
        )

    def why(self, reason: BaseException | None) -> str:
        """Why the connection ended, in words that do not repeat the peer's name or address."""
        if reason is None:
            return "the connection closed"
        text = str(reason).removeprefix(f"lost connection to {self.name}: ")
        text = text.replace(self.name, "the student").replace(f" to {self.peer}", "")
        return text.replace(self.peer, "the student")

    def log_gone(self, why: str) -> None:
        """The one line that says this peer is gone (DEBUG for a monitor)."""
        level = logging.DEBUG if self.hello.role == "monitor" else logging.INFO
        log.log(level, "%s is gone: %s", self.name, why)

    def start(self) -> Peer:
        """Start the reader, heartbeat and sender threads."""
        self.session.start()
        self._sender.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the connection is open."""
        return self.session.alive

    def send(self, type: int, header: dict[str, Any], frames: Sequence[Any] = ()) -> None:
        """Queue one message (never blocks); a peer whose outbox overflows is closed."""
        self._queue((type, header, frames))

    def send_lazy(self, build: Callable[[], Outgoing]) -> None:
        """Queue a message that the sender thread builds when its turn comes (the encoding
        of knowledge happens there, not in the thread that decided to send it)."""
        self._queue(build)

    def _queue(self, item: _Item) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._outbox) >= self._max_outbox:
                overflow = True
            else:
                overflow = False
                self._outbox.append(item)
                self._cond.notify()
        if overflow:
            self.session.close(
                ConnectionLostError(
                    f"{self.name} does not read: {self._max_outbox} messages waited to be sent"
                )
            )

    def close_after_sends(self) -> None:
        """Close the connection once what was queued before has been sent."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._outbox.append(None)
                self._cond.notify()

    def close(self) -> None:
        """Close now (what is queued is dropped)."""
        self.session.close()

    def _closed(
        self, on_close: Callable[[Peer, BaseException | None], None], reason: BaseException | None
    ) -> None:
        with self._cond:
            self._closing = True
            self._outbox.clear()
            self._cond.notify()
        on_close(self, reason)

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                wait_until(
                    self._cond,
                    lambda: bool(self._outbox) or not self.session.alive,
                    Deadline(None),
                )
                if not self._outbox:
                    return  # the session closed
                item = self._outbox.popleft()
            if item is None:
                try:
                    self.session.send(MsgType.BYE)
                except ConnectionLostError:
                    pass
                self.session.close()
                return
            try:
                message = item() if callable(item) else item
                self.session.send(MsgType(message[0]), message[1], message[2])
            except ConnectionLostError:
                return  # the session closed itself and called on_close
            except Exception as exc:  # encoding failed: this student cannot be served
                log.error("closing %s: its knowledge could not be sent: %s", self.name, exc)
                self.session.close(exc)
                return


def replaced(actions: Sequence[object]) -> list[int]:
    """The connections ``actions`` close because a newer student of their rank replaced them."""
    return [a.cid for a in actions if isinstance(a, Close) and a.reason.startswith("replaced")]


def log_round(
    peer: Peer, event: object, machine: TeacherMachine, acks: set[tuple[str, int]]
) -> None:
    """One line per round a student starts, resumes or finishes (of the rounds ``machine``
    serves: a refused request is not one; ``acks``: the finished rounds logged already, which
    a student tells again on every new connection)."""
    if machine.queries or not isinstance(event, (Subscribe, RoundDone)):
        return
    if event.round >= machine.times:
        return
    if isinstance(event, RoundDone):
        if (peer.hello.client, event.round) not in acks:
            acks.add((peer.hello.client, event.round))
            log.info("%s finished round %d", peer.name, event.round)
    elif event.start < peer.hello.world_size:
        log.info("%s started round %d", peer.name, event.round)
    else:
        log.info("%s resumed round %d at sample %d", peer.name, event.round, event.start)
