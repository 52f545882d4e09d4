"""The student's driver for one online teacher: links, threads and waits around the machine.

An :class:`OnlineSource` holds one :class:`~.link.Link` per address of the teacher (several
addresses are replicas of one model) and a :class:`~.student_machine.StudentMachine`. Session
reader threads decode and check what arrives and hand it to the machine; the training loop's
thread waits, with timeouts, for what the machine holds; reconnections run in threads of
their own. See ``docs/protocol.md`` for the messages.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._errors import (
    ClosedError,
    ConfigError,
    ConnectionLostError,
    KnowledgeError,
    PantheonError,
    PantheonTimeoutError,
    ProtocolError,
    TeacherError,
)
from .._knowledge import FINGERPRINT_KEYS, Chunk, Description, check_batch
from .._util import Deadline, wait_until
from .._wire import (
    Heartbeat,
    Message,
    MsgType,
    Session,
    UserInbox,
    parse_address,
    resolve_token,
    user_message,
)
from .link import Link, check_transport
from .members import Follow
from .messages import Bye, Data, Desc, EndRound, ErrorCode, Fail, Query, header, parse
from .payload import decode_payload, encode_chunks
from .stream import OnlineRound
from .student_machine import Action, Reconnect, StudentMachine, Transmit

__all__ = ["OnlineSource"]

log = logging.getLogger("pantheon")

GOODBYE_WAIT = 2.0
"""Seconds a closing student waits, after its goodbye, for the teacher to close the
connection. Reading on until then means the goodbye is read before the connection ends: a
socket closed with unread data resets the connection, and a teacher whose send failed on it
first would take the student for lost and wait for it to come back."""


class OnlineSource:
    """An online teacher (one address, or several replicas), as the student sees it.

    Args:
        index: the teacher id.
        address: ``"host:port"`` or a list of replica addresses.
        token: shared secret (default ``PANTHEON_TOKEN``).
        timeout: seconds to wait to connect, for the description, and to reconnect before
            declaring the teacher gone.
        credits: DATA messages the teacher may have in flight (default 16).
        window: bytes of knowledge the teacher may have in flight (default 0: no byte bound).
        heartbeat: liveness settings.
        sparse_topk: hand top-k knowledge in its sparse form.
        group / rank / world_size: this student's job, and its shard of every round.
        transport: ``"auto"`` (default: shared memory with a teacher on this host, TCP
            otherwise), ``"tcp"`` or ``"shm"`` (shared memory or an error); see
            :data:`~pantheon._online.link.TRANSPORTS`.
        follow: the replicas are the members of a named pool (:mod:`.members`): links
            follow it (a replica back on another port, replicas added or removed).
        name: how messages name the teacher (default: from its addresses).
    """

    def __init__(
        self,
        index: int,
        address: str | Sequence[str],
        *,
        token: str | bytes | None,
        timeout: float,
        credits: int = 16,
        window: int = 0,
        heartbeat: Heartbeat | None = None,
        sparse_topk: bool = False,
        group: str = "default",
        rank: int = 0,
        world_size: int = 1,
        transport: str = "auto",
        follow: Follow | None = None,
        name: str | None = None,
    ) -> None:
        check_transport(transport)
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ConfigError("in_address needs at least one 'host:port'")
        for a in addresses:
            parse_address(a)
        self.index = index
        self.name = name or f"teacher {index} ({', '.join(addresses)})"
        self.client_id = uuid.uuid4().hex
        self.sparse_topk = sparse_topk
        self.token = resolve_token(token)
        self.timeout = timeout
        self.credits = max(1, credits)
        self.heartbeat = heartbeat or Heartbeat()
        self.transport = transport
        self.hello = {
            "client": self.client_id,
            "role": "student",
            "group": group,
            "rank": rank,
            "world_size": world_size,
        }
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        self.machine = StudentMachine(
            self.name,
            len(addresses),
            rank=rank,
            world_size=world_size,
            credits=self.credits,
            window=window,
        )
        self.links = [Link(self, a, i) for i, a in enumerate(addresses)]
        self.closed = False
        self.inbox = UserInbox(f"{self.name} (Student.recv)")
        self._stats = {"batches": 0, "samples": 0, "bytes": 0, "reconnects": 0}
        self._down_since: float | None = None
        self.follow = follow

    def delivered(self, chunk: Chunk | None) -> None:
        """Count a chunk handed to the student (its ``batches`` and ``samples``)."""
        if chunk is not None:
            self._stats["batches"] += 1
            self._stats["samples"] += len(chunk.ids)

    # ------------------------------------------------------------------ actions

    def queue(self, actions: list[Action]) -> None:
        """Take the machine's actions, with the lock held: messages wait on their link in the
        order the machine decided them (a SUBSCRIBE before the CREDITs of its subscription);
        :meth:`flush` sends them, without the lock."""
        for action in actions:
            if isinstance(action, Reconnect):
                threading.Thread(target=self._reconnect, args=(action.link,), daemon=True).start()
            else:
                self.links[action.link].pending.append(action)

    def flush(self) -> None:
        """Send what waits on every link, in order (one thread at a time per link).

        Never waits for the link's lock: a thread that holds it sends what was queued, and
        looks again after releasing it. A failed send closes the session and calls
        :meth:`on_close` in the sending thread, which flushes again while that thread holds
        the lock; waiting for it there would wait for itself forever.
        """
        for link in self.links:
            while link.pending and link.send_lock.acquire(blocking=False):
                try:
                    self._drain(link)
                finally:
                    link.send_lock.release()

    def _drain(self, link: Link) -> None:
        """With ``link.send_lock`` held: send what waits on ``link``, in order."""
        while link.pending:
            self._transmit(link.pending.popleft())

    def _transmit(self, action: Transmit) -> None:
        session = self.links[action.link].session
        if session is None:
            return  # it went down meanwhile: its close resumes what it carried
        kind, head = header(action.event)
        frames: list[Any] = []
        if action.chunk is not None:
            chunk_head, frames = encode_chunks([action.chunk], {})
            head = {**chunk_head, **head}
        try:
            session.send(kind, head, frames)
        except ConnectionLostError:
            pass  # on_close resumes the round or sends the queries again

    # ------------------------------------------------------------------ connecting

    def start(self, timeout: float) -> None:
        """Connect every link: the first within ``timeout``, each other within 1 s more;
        replicas not reached then (while one was) are connected in the background."""
        deadline = Deadline(timeout)
        errors: list[BaseException] = []
        for link in self.links:
            budget = deadline if link is self.links[0] else Deadline(1.0)
            if (link.session is not None and link.session.alive) or (
                self.machine.links[link.index].reconnecting
            ):
                continue  # an earlier start() that failed on another teacher connected it,
                # or it is being connected in the background since
            try:
                link.connect(budget)
            except TeacherError as exc:  # not reachable in time; a replica may be
                errors.append(exc)
                continue
            self.up(link)
        if len(errors) == len(self.links):
            raise errors[0]
        if errors:  # replicas not up yet: connected in the background
            with self.cond:
                for link in self.links:
                    if link.session is None:
                        self.queue(self.machine.not_reached(link.index))
        errors.clear()  # their tracebacks would keep this call's frames, and the Student, alive
        if self.follow is not None:
            self.follow.start(self)

    def up(self, link: Link) -> None:
        with self.cond:
            if link.session is None or not link.session.alive or self.closed:
                return  # it closed already (its on_close took care of it), or this student did
            self.queue(self.machine.link_up(link.index))
            where = link.where(len(self.links) > 1)
            if self._down_since is not None:
                gone = time.monotonic() - self._down_since
                log.info("%s: reconnected%s after %.1f s", self.name, where, gone)
                self._down_since = None
            else:
                log.info("%s: connected%s (%s)", self.name, where, link.described)
            self.cond.notify_all()
        self.flush()

    def _reconnect(self, index: int) -> None:
        if self.follow is not None:
            self.follow.reconnect(self, index)
            return
        link = self.links[index]
        try:
            link.connect(Deadline(self.timeout))
        except PantheonError as exc:
            with self.cond:
                self.machine.reconnect_failed(index, exc)
                self.cond.notify_all()
            return
        self.count_reconnect()
        self.up(link)

    def count_reconnect(self) -> None:
        """Count one reconnection (for :meth:`stats`)."""
        with self.cond:
            self._stats["reconnects"] += 1

    def on_close(self, link: Link, session: Session, reason: BaseException | None) -> None:
        """A link's session closed (its reader thread, or this side)."""
        with self.cond:
            if link.session is not None and link.session is not session:
                return  # an older connection of this link, replaced: the link is up
            link.session = None
            actions = self.machine.link_down(link.index, reason)
            if any(isinstance(a, Reconnect) for a in actions) and self._down_since is None:
                self._down_since = time.monotonic()
            self.queue(actions)
            self.cond.notify_all()
        if actions:
            log.warning(
                "%s: %s; reconnecting", self.name, link.why_down(reason, len(self.links) > 1)
            )
        self.flush()

    # ------------------------------------------------------------------ messages

    def on_message(self, link: Link, session: Session, msg: Message) -> None:
        """A link's reader thread: check at the edge, then hand to the machine."""
        t = msg.type
        if t == MsgType.USER:
            self.inbox.put(msg)  # ProtocolError (malformed, a flood): the link closes
            with self.cond:
                self.cond.notify_all()
            return
        if t == MsgType.STATUS_INFO:
            return
        event = parse(t, msg.header)
        chunk = self._decode(msg) if isinstance(event, (Data, Query)) else None
        with self.cond:
            m = self.machine
            if isinstance(event, Data):
                assert chunk is not None
                m.on_data(link.index, event.sub, event.upto, chunk)
            elif isinstance(event, Query):  # an ANSWER
                assert chunk is not None
                m.on_answer(link.index, event.qid, chunk)
            elif isinstance(event, EndRound):
                m.on_end(link.index, event)
            elif isinstance(event, Desc):
                m.on_desc(event)
            elif isinstance(event, Fail):
                if event.code == ErrorCode.REPLACED and link.session is not session:
                    return  # this student's own newer connection replaced its old one
                m.on_fail(event)
            elif isinstance(event, Bye):
                m.on_bye(link.index)
            else:
                raise ProtocolError(f"{self.name} sent a {type(event).__name__} message")
            self.cond.notify_all()

    def _decode(self, msg: Message) -> Chunk:
        desc, codecs = self.machine.desc, self.machine.codecs
        if desc is None:
            raise ProtocolError(f"{self.name} sent knowledge before its description")
        self._stats["bytes"] += sum(memoryview(f).nbytes for f in msg.frames)
        try:
            chunk = decode_payload(msg.header, msg.frames, desc, codecs, sparse=self.sparse_topk)
            plain = {k: v for k, v in chunk.data.items() if not self.sparse_topk or k not in codecs}
            check_batch(plain, {k: desc[k] for k in plain}, where=f"knowledge from {self.name}")
        except KnowledgeError as exc:
            raise ProtocolError(str(exc)) from None
        return chunk

    # ------------------------------------------------------------------ Source protocol

    def desc(self, timeout: float) -> Description:
        """The teacher's description (waits until it sent it, at most ``timeout`` s)."""
        m = self.machine

        def ready() -> bool:
            if m.error is not None:
                raise m.error
            return m.desc is not None

        with self.cond:
            if not wait_until(self.cond, ready, Deadline(timeout)):
                raise PantheonTimeoutError(
                    f"{self.name} did not send its knowledge description within {timeout:g} s "
                    "(it knows it once it produced its first batch; in query mode, after the "
                    "first query)"
                )
            assert m.desc is not None
            return m.desc

    def fingerprints(self) -> dict[str, str]:
        """The teacher's fingerprints from its DESC message (empty before it, or if none)."""
        extra = self.machine.extra
        return {k: extra[k] for k in FINGERPRINT_KEYS if isinstance(extra.get(k), str)}

    def open_round(self, round_index: int, start_sample: int) -> OnlineRound:
        """Stream round ``round_index`` from this rank's position ``start_sample``."""
        with self.cond:
            self.queue(self.machine.open_round(round_index, start_sample))
            assert self.machine.round is not None
            rnd = OnlineRound(self, self.machine.round)
        self.flush()
        return rnd

    def ack_round(self, round_index: int) -> None:
        """Tell the teacher(s) that the training loop holds every sample of ``round_index``."""
        with self.cond:
            self.queue(self.machine.ack_round(round_index))
        self.flush()

    def submit(self, qid: int, query: Chunk) -> None:
        """Send a query (the student's own feed batch); the answer comes from :meth:`answer`."""
        with self.cond:
            self.queue(self.machine.submit(qid, query))
        self.flush()

    def answer(self, qid: int, timeout: float, stop: threading.Event | None = None) -> Chunk:
        """The knowledge answering query ``qid`` (waits at most ``timeout`` s; once ``stop`` is
        set, within half a second with :class:`~pantheon.ClosedError`: its reader stopped)."""
        m = self.machine

        def ready() -> bool:
            if stop is not None and stop.is_set():
                raise ClosedError(
                    f"the reader of query {qid} stopped while waiting for {self.name}"
                )
            return qid in m.answers

        with self.cond:
            self._wait(ready, timeout, f"did not answer query {qid}")
            result = m.answers.pop(qid)
            if isinstance(result, BaseException):
                raise result
            self.delivered(result)
        return result

    def forget(self, qids: list[int]) -> None:
        """Drop queries whose answers nobody will take; their late answers are ignored."""
        with self.cond:
            self.machine.forget(qids)

    # ------------------------------------------------------------------ user messages

    def send_user(self, data: Any, timeout: float) -> None:
        """Send one user message to the teacher (waits for a connection)."""
        head, frames = user_message(data)
        m = self.machine

        def ready() -> bool:
            if m.error is not None:
                raise m.error
            return m.live() is not None

        deadline = Deadline(timeout)
        while True:
            with self.cond:
                if not wait_until(self.cond, ready, deadline):
                    raise PantheonTimeoutError(
                        f"{self.name} is not connected; could not send within {timeout:g} s"
                    )
                index = m.live()
                assert index is not None
                session = self.links[index].session
            if session is None:
                continue
            try:
                session.send(MsgType.USER, head, frames)
                return
            except ConnectionLostError:
                continue

    def recv_user(self, timeout: float) -> Any:
        """The next message the teacher sent with ``Teacher.send`` (waits at most ``timeout``
        s; the teacher's error, once the connection failed for good, is raised at once)."""
        with self.cond:
            self._wait(lambda: not self.inbox.empty(), timeout, "(Student.recv) sent no message")
        return self.inbox.get(max(timeout, 0.001))

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """With ``cond`` held: wait until ``ready()``; the machine's error, once it has one, is
        raised at once; :class:`PantheonTimeoutError` ("NAME WHAT within T s") after
        ``timeout`` seconds."""
        m = self.machine

        def check() -> bool:
            if ready():
                return True
            if m.error is not None:
                raise m.error
            return False

        if not wait_until(self.cond, check, Deadline(timeout)):
            raise PantheonTimeoutError(f"{self.name} {what} within {timeout:g} s")

    def stats(self) -> Mapping[str, Any]:
        """Chunks (``batches``) and ``samples`` delivered, bytes received, reconnections,
        messages through shared memory, and the transport of each connected address
        (``{name: "shm" | "tcp"}``)."""
        out: dict[str, Any] = dict(self._stats)
        out["shm_messages"] = sum(link.shm_messages for link in self.links)
        out["transport"] = {
            f"{self.name} at {link.address}": link.transport
            for link in self.links
            if link.session is not None
        }
        return out

    def close(self, goodbye: bool = True) -> None:
        """Disconnect; with ``goodbye`` the teacher is told this student is gone for good,
        without it the teacher waits for it to come back (a resumed ``state_dict``)."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.machine.closed = True
            self.stopped.set()
            if goodbye:
                self.queue(self.machine.leaving())
            self.cond.notify_all()
        sessions: list[Session] = []
        said: list[Session] = []
        for link in self.links:
            # what the machine decided goes first: a reconnection may have queued its
            # acknowledgements without sending them yet, and a goodbye before them would
            # leave the teacher with a round never done
            with link.send_lock:
                self._drain(link)
                session = link.session
                if session is None:
                    continue
                sessions.append(session)
                if goodbye:
                    try:
                        session.send(MsgType.BYE, {"reason": "the student closed"})
                        said.append(session)
                    except ConnectionLostError:
                        pass
        deadline = Deadline(GOODBYE_WAIT)
        for session in said:  # the teacher closes once it read the goodbye
            session.wait_closed(deadline.left())
        for session in sessions:
            session.close()
