"""One connected peer of a teacher: its session (reader and heartbeat) and an outbox drained
by a sender thread, so that a slow student never blocks the teacher's other work, or by the
thread that queued the message when that cannot block the others (:meth:`Peer.drain`); the
log lines of its rounds."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ConnectionLostError, error_text
from .._util import Deadline, wait_until
from .._wire import Connection, Heartbeat, Message, MsgType, Session, ShmSender
from .fanout import Close
from .messages import ErrorCode, Fail, Hello, RoundDone, Subscribe, header

if TYPE_CHECKING:
    from .teacher_machine import TeacherMachine

__all__ = ["CallerSends", "Peer", "log_round", "replaced"]

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
        self.unsendable = ""  # why its knowledge could not be sent (it was closed for it)
        self._outbox: collections.deque[_Item] = collections.deque()
        self._max_outbox = max_outbox
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # held by the one thread sending this peer's outbox
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

    def send_lazy(self, build: Callable[[], Outgoing], *, by_caller: bool = False) -> None:
        """Queue a message that is built (encoded) when its turn to be sent comes.

        Args:
            build: returns the message.
            by_caller: the calling thread will call :meth:`drain` (after releasing its locks)
                instead of waking the sender thread: one thread hand-off less per message.
        """
        self._queue(build, wake=not by_caller)

    def drain(self) -> None:
        """Send what is queued from this thread, unless another thread is sending this peer's
        messages already (then it, or the sender thread, sends them)."""
        if not self._send_lock.acquire(blocking=False):
            with self._cond:
                self._cond.notify()  # the holder may have looked before the item came
            return
        try:
            self._send_queued()
        finally:
            self._send_lock.release()

    def _queue(self, item: _Item, *, wake: bool = True) -> None:
        with self._cond:
            if self._closing and item is not None:
                return
            if len(self._outbox) >= self._max_outbox:
                overflow = True
            else:
                overflow = False
                self._outbox.append(item)
                if wake:
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
            if self._closing:
                return
            self._closing = True
        self._queue(None)

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
            with self._send_lock:
                if not self._send_queued():
                    return

    def _send_queued(self) -> bool:
        """Send the outbox until it is empty (the send lock held); False: the connection is
        closed or closing, this peer gets no more."""
        while True:
            with self._cond:
                if not self._outbox:
                    return self.session.alive
                item = self._outbox.popleft()
            if item is None:
                try:
                    self.session.send(MsgType.BYE)
                except ConnectionLostError:
                    pass
                self.session.close()
                return False
            try:
                message = item() if callable(item) else item
                self.session.send(MsgType(message[0]), message[1], message[2])
            except ConnectionLostError:
                return False  # the session closed itself and called on_close
            except Exception as exc:  # encoding failed: this student cannot be served
                log.error("closing %s: its knowledge could not be sent: %s", self.name, exc)
                what = error_text(exc)
                self.unsendable = f"the teacher's knowledge could not be sent: {what}"
                with contextlib.suppress(ConnectionLostError):  # told why, not to come back
                    self.session.send(*header(Fail(self.unsendable, ErrorCode.FAILED)))
                self.session.close(exc)
                return False


class CallerSends:
    """Which knowledge the thread that decided to send it (a producer, or a reader thread that
    got credits) sends itself, once it has released the teacher's lock, instead of handing it
    to the peer's sender thread: one thread hand-off less per message (``docs/design.md``).

    A thread sends itself only to a peer whose knowledge goes through shared memory: a copy
    into its ring and a small header on the socket, which does not wait for the student (a
    message that finds no free slot goes over the socket from the same thread: rare, since
    the ring holds the student's credits and read-ahead, and bounded by the send timeout). Over
    TCP the sender threads send (a 1 MiB message waits for the student to read it; a reader
    thread sending it would stop reading its own peer's credits, and a slow student would stop
    the knowledge of the others): measured slower, not faster, there.
    """

    def __init__(self) -> None:
        self._local = threading.local()  # .on: in a deferring locked section; .peers

    def deferring(self, run: Callable[[list[Any]], None]) -> Callable[[list[Any]], None]:
        """``run`` (carrying out actions under the lock) for a thread that calls :meth:`drain`
        once it has released the lock."""

        def deferred(actions: list[Any]) -> None:
            self._local.on = True
            try:
                run(actions)
            finally:
                self._local.on = False

        return deferred

    def by_caller(self, peer: Peer) -> bool:
        """Whether the calling thread sends ``peer``'s knowledge itself (then noted for
        :meth:`drain`)."""
        if not getattr(self._local, "on", False) or not isinstance(peer.session.conn, ShmSender):
            return False
        pending: list[Peer] | None = getattr(self._local, "peers", None)
        if pending is None:
            pending = self._local.peers = []
        if peer not in pending:
            pending.append(peer)
        return True

    def drain(self) -> None:
        """Send what this thread queued (called without the teacher's lock)."""
        pending: list[Peer] | None = getattr(self._local, "peers", None)
        if pending:
            self._local.peers = []
            for peer in pending:
                peer.drain()


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
