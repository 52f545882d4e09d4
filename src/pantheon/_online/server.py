"""The online teacher's driver: sockets, threads and the round factory around the machine.

:class:`TeacherServer` accepts and authenticates clients (a bounded number of handshakes at
once), keeps a :class:`~.peer.Peer` per connection, runs a producer thread per cursor of the
:class:`~.teacher_machine.TeacherMachine` and carries out its actions. The machine lives for
one ``serve_rounds`` / ``serve_queries`` call; clients that come between calls are held
(their messages queued). ``docs/protocol.md`` describes the messages.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._chunks import COALESCE_BYTES
from .._errors import ClosedError, PantheonTimeoutError, ProtocolError, TeacherError
from .._knowledge import Chunk, Description, check_batch
from .._util import Deadline, wait_until
from .._wire import (
    Connection,
    Heartbeat,
    Message,
    MsgType,
    ShmSender,
    UserInbox,
    check_bind,
    listen,
    resolve_token,
    user_message,
)
from .acceptor import Acceptor
from .described import Described
from .early import EarlyRequests
from .fanout import Action, Close, ProtocolViolation, Send, SendData, StartCursor, StopCursor
from .messages import (
    ErrorCode,
    Fail,
    Hello,
    Query,
    StatusRequest,
    Subscribe,
    header,
    parse,
)
from .metrics import TeacherMeters
from .options import ServeOptions
from .payload import Counters, EncodedData, decode_plain
from .peer import CallerSends, Peer, log_round, replaced
from .producer import CursorRunner, RoundFactory
from .queries import PendingQuery, QueryBatcher, send_answer, stopped_answering
from .teacher_machine import TeacherMachine

__all__ = ["ServeOptions", "TeacherServer"]

log = logging.getLogger("pantheon")

_TICK = 0.25  # seconds between the serving loop's checks (gates, parked cursors, the end)


class TeacherServer:
    """The network side of an online :class:`~pantheon.Teacher`.

    Args:
        host: interface to bind (default loopback; anything else needs a token).
        port: TCP port (0 = any free port).
        token: shared secret (default ``PANTHEON_TOKEN``).
        timeout: seconds to wait for a student (to connect, to come back) before failing.
        use_fp16: send float knowledge as float16.
        codecs: per-key codecs.
        prefetch_batches: chunks a cursor computes ahead of its slowest student (default 10).
        heartbeat_interval / heartbeat_timeout: liveness, seconds (defaults 1 and 10).
        coalesce_bytes: chunks ready together are sent as one message up to this size
            (default 4 MiB).
        max_students: students connected at once at most (default 64).
        max_handshakes: connections authenticating at once at most (default 32); more are
            closed at once (a flood of unauthenticated connections costs nothing).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        token: str | bytes | None,
        timeout: float,
        use_fp16: bool,
        codecs: Mapping[str, Any],
        prefetch_batches: int = 10,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
        coalesce_bytes: int = COALESCE_BYTES,
        max_students: int = 64,
        max_handshakes: int = 32,
    ) -> None:
        self._token = resolve_token(token)
        check_bind(host, self._token)
        self._timeout = timeout
        self.described = Described(codecs, use_fp16)  # use_fp16 may change until it is known
        self._prefetch = prefetch_batches
        self._heartbeat = Heartbeat(heartbeat_interval, heartbeat_timeout)
        self._coalesce = coalesce_bytes
        self._max_students = max_students
        self._cond = threading.Condition()
        self._machine: TeacherMachine | None = None
        self._peers: dict[int, Peer] = {}
        self._early = EarlyRequests()
        self._next_cid = 0
        self._arrivals = 0  # students that connected and authenticated, ever
        self._arrivals_waited = 0  # of them, those a wait_for_student already returned for
        self._runner: CursorRunner | None = None
        self._caller_sends = CallerSends()
        self._run_deferring = self._caller_sends.deferring(self._run)
        self._failed: str | None = None  # why the last serve call failed: told to newcomers
        self._served_times = 0  # rounds the last serve call finished: told to newcomers
        self._acks: set[tuple[str, int]] = set()  # (client, round) acks logged (sent again)
        self.program_name = ""  # what the teacher runs, for pantheon status
        self._batcher: QueryBatcher | None = None
        self._inbox = UserInbox("the student (Teacher.recv)")
        self._closed = False
        self._stats = Counters("batches", "samples", "bytes", "messages", "backpressure_seconds")
        self.meters = TeacherMeters()
        self._began = time.monotonic()
        self._listener = listen(host, port)
        self.address = self._listener.address
        log.info("teacher listening on %s", self.address)
        self._acceptor = Acceptor(
            self._listener,
            self._token,
            self._heartbeat,
            self._client,
            max_handshakes=max_handshakes,
        )

    # ------------------------------------------------------------------ connections

    def _client(self, conn: Connection, hello: Hello) -> None:
        """An authenticated client: give it a peer and hand it to the machine."""
        with self._cond:
            if self._closed:
                conn.close()
                return
            cid = self._next_cid
            self._next_cid += 1
            peer = Peer(
                cid,
                conn,
                hello,
                on_message=self._on_message,
                on_close=self._on_close,
                heartbeat=self._heartbeat,
            )
            self._peers[cid] = peer
            self._arrivals += hello.role == "student"
            machine = self._machine
            if machine is None:
                actions = self._idle_welcome(cid, hello)
            else:
                actions = machine.connect(cid, hello, conn.peer)
            olds = [self._peers[c] for c in replaced(actions) if c in self._peers]
            peer.start()
            self._run(actions)
            self._cond.notify_all()
        level = logging.DEBUG if hello.role == "monitor" else logging.INFO
        how = "shared memory" if isinstance(conn, ShmSender) else "TCP"
        log.log(level, "%s connected and authenticated (knowledge over %s)", peer.name, how)
        for old in olds:
            log.info("%s replaces %s", peer.name, old.name)

    def _idle_welcome(self, cid: int, hello: Hello) -> list[Action]:
        """What a student connecting between serve calls is told: why the last one failed,
        or the description with the rounds the last one served (asking for more then fails
        at once, saying so)."""
        if hello.role != "student":
            return []
        if self._failed is not None:
            return [Send(cid, *header(Fail(self._failed, ErrorCode.FAILED)))]
        if self._served_times and self.described.desc is not None:
            return [Send(cid, *header(self.described.event(self._served_times)))]
        return []

    def _on_close(self, peer: Peer, reason: BaseException | None) -> None:
        with self._cond:
            self._peers.pop(peer.cid, None)
            machine = self._machine
            self._early.gone(peer, serving=machine is not None)
            actions = machine.disconnect(peer.cid) if machine is not None else []
            if machine is not None and peer.unsendable and machine.failure is None:
                # the knowledge itself cannot be sent (a codec refuses it): to any student
                actions += machine.fail(peer.unsendable)
            if self._batcher is not None:
                self._batcher.drop(peer.cid)
            self._run(actions)
            # else logged when it was closed: by the machine, or for a protocol error
            if not self._closed and not peer.close_reason and not isinstance(reason, ProtocolError):
                peer.log_gone(peer.why(reason))
            self._cond.notify_all()

    def _on_message(self, peer: Peer, msg: Message) -> None:
        """Reader thread: validate at the edge; a bad message closes only that connection."""
        t = msg.type
        if t == MsgType.USER:
            self._inbox.put(msg)
            return
        event = parse(t, msg.header)  # ProtocolError: the session logs it and closes
        # a query's feeds are decoded (and so checked) whatever the teacher serves
        feeds = decode_plain(msg.header, msg.frames) if t == MsgType.QUERY else None
        if isinstance(event, StatusRequest) and self._machine is None:
            peer.send(MsgType.STATUS_INFO, {"status": self.status()})
            return
        with self._cond:
            machine = self._machine
            if machine is None:
                if self._failed is not None and isinstance(event, (Subscribe, Query)):
                    self._run([Send(peer.cid, *header(Fail(self._failed, ErrorCode.FAILED)))])
                    return
                self._early.hold(peer, msg, event)  # the next serve call submits it
                return
            try:
                actions = machine.receive(peer.cid, event, time.monotonic())
            except ProtocolViolation as exc:
                raise ProtocolError(f"{peer.name}: {exc}") from None
            log_round(peer, event, machine, self._acks)
            self._run_deferring(actions)
            self._cond.notify_all()
            answers_queries = machine.queries  # otherwise the machine refused the query
        self._caller_sends.drain()
        if feeds is not None and answers_queries:
            self._on_query(peer, msg, feeds)

    def _on_query(self, peer: Peer, msg: Message, feeds: Chunk) -> None:
        """A QUERY that came while queries are served: to the batcher, once (one held
        before the serving started is submitted by its replay instead); if the batcher is
        gone or stopped meanwhile, the student is told that this query failed."""
        batcher = self._batcher
        qid = msg.header["qid"]
        query = PendingQuery(peer.cid, qid, feeds)
        timeout = self._heartbeat.timeout
        if batcher is None:
            peer.send(*header(stopped_answering(qid)))
        elif not batcher.submit(query, timeout=timeout):
            peer.send(*header(batcher.refusal(qid, timeout)))

    # ------------------------------------------------------------------ actions

    def _run(self, actions: list[Action]) -> None:
        """Carry out the machine's actions, called with the lock held: the messages go to the
        peers' outboxes in the order the machine decided them (nothing here blocks; the
        encoding and the sending happen in each peer's sender thread)."""
        for action in actions:
            if isinstance(action, SendData):
                self._send_data(action)
            elif isinstance(action, Send):
                peer = self._peers.get(action.cid)
                if peer is None:
                    continue
                head = action.header
                if action.type == MsgType.STATUS_INFO:
                    head = {"status": {**head["status"], **self._status_extra()}}
                peer.send(action.type, head)
            elif isinstance(action, Close):
                peer = self._peers.get(action.cid)
                if peer is not None:
                    if not peer.close_reason:
                        peer.close_reason = action.reason
                        peer.log_gone(action.reason)
                    peer.close_after_sends()
            elif isinstance(action, (StartCursor, StopCursor)):
                runner = self._runner
                if runner is not None:
                    runner.apply(action)

    def _send_data(self, action: SendData) -> None:
        codecs = self.described.codecs
        encoded = EncodedData(action.chunks, codecs, self._stats, self.meters.observe_parts)
        for cid, sub in action.targets:
            peer = self._peers.get(cid)
            if peer is not None:
                extra = {"sub": sub, "round": action.round, "upto": action.upto}
                by_caller = self._caller_sends.by_caller(peer)
                peer.send_lazy(functools.partial(encoded.message, extra), by_caller=by_caller)

    # ------------------------------------------------------------------ description

    def _status_extra(self) -> dict[str, Any]:
        """What the teacher adds to its machine's status: where it is, what it serves."""
        extra: dict[str, Any] = {"address": self.address, "stats": self.stats()}
        extra["program"] = self.program_name
        extra["uptime_seconds"] = time.monotonic() - self._began
        return {**extra, **self.described.status()}

    def status(self) -> dict[str, Any]:
        """What ``pantheon status`` shows (see ``docs/protocol.md``, STATUS_INFO)."""
        with self._cond:
            machine = self._machine
            base = machine.status() if machine is not None else {"mode": "idle"}
            return {**base, **self._status_extra()}

    def _known_desc(self, chunk: Chunk) -> Description:
        """The description, learned from ``chunk`` if this is the first."""
        self._learn_desc(chunk)
        assert self.described.desc is not None
        return self.described.desc

    def _learn_desc(self, chunk: Chunk) -> None:
        if not self.described.learn(chunk):
            return
        with self._cond:
            machine = self._machine
            actions = machine.set_desc(self.described.event(machine.times)) if machine else []
            self._run(actions)

    def set_fingerprints(self, fingerprints: Mapping[str, str]) -> None:
        """What the DESC message tells of the teacher (``fingerprint``,
        ``dataset_fingerprint``); sent again if the description is already known."""
        with self._cond:
            self.described.fingerprints = dict(fingerprints)
            machine = self._machine
            if machine is None or self.described.desc is None:
                return
            actions = machine.set_desc(self.described.event(machine.times))
            self._run(actions)

    # ------------------------------------------------------------------ serving

    def _start_machine(self, machine: TeacherMachine) -> list[Action]:
        """Make ``machine`` current; hand it the clients that came before it, and their
        requests. Holds the lock."""
        self._machine = machine
        if self.described.desc is not None:
            machine.desc = self.described.event(machine.times)
        return self._early.replay(machine, self._peers, self._batcher, self._acks)

    def _serve(self, machine: TeacherMachine) -> None:
        """The serving loop: until the machine is done, failed, abandoned or starved."""
        deadline = Deadline(self._timeout)
        with self._cond:
            self._failed = None
            self._run(self._start_machine(machine))
        try:
            while True:
                with self._cond:
                    self._cond.wait(_TICK)
                    self._check_open()
                    if self._runner is not None and self._runner.failure is not None:
                        raise self._runner.failure
                    if machine.finished():
                        self._served_times = machine.times
                        return
                    reason = machine.abandoned()
                    if reason is not None:
                        raise TeacherError(reason)
                    if machine.failure is not None:
                        raise TeacherError(machine.failure)
                    if any(p.hello.role == "student" for p in self._peers.values()):
                        deadline = Deadline(self._timeout)
                    elif deadline.expired:
                        raise TeacherError(
                            f"no student connected to the teacher at {self.address} for "
                            f"{self._timeout:g} s; giving up (raise Teacher(timeout=...) to wait "
                            "longer)"
                        )
                    self._run(machine.tick(time.monotonic()))
        except BaseException as exc:
            with self._cond:
                why = str(exc) or type(exc).__name__  # KeyboardInterrupt says nothing
                self._failed = machine.failure or f"the teacher stopped: {why}"
            raise
        finally:
            with self._cond:
                self._machine = None
                runner, self._runner = self._runner, None
                self._cond.notify_all()
            if runner is not None:
                runner.stop_all()
                self._stats.add(backpressure_seconds=runner.wait_seconds)

    def serve_rounds(
        self, make_round: RoundFactory, times: int, options: ServeOptions | None = None
    ) -> None:
        """Serve ``times`` rounds on request; return once the groups waited for have
        acknowledged their last round (see :class:`~.teacher_machine.TeacherMachine`)."""
        opts = options or ServeOptions()
        machine = TeacherMachine(
            times=times,
            groups=opts.groups,
            max_students=self._max_students,
            window=self._prefetch,
            coalesce_bytes=self._coalesce,
            gate_timeout=self._timeout,
            park_timeout=self._heartbeat.timeout,
        )
        self._runner = CursorRunner(
            machine,
            make_round,
            self._cond,
            self._known_desc,
            self._run_deferring,
            drain=self._caller_sends.drain,
        )
        with self._cond:
            self._run(machine.prefetch(0))  # the description is known before anyone asks
        self._serve(machine)

    def serve_queries(
        self,
        handler: Callable[[dict[str, Any]], Mapping[str, Any]],
        options: ServeOptions | None = None,
    ) -> None:
        """Answer the students' queries with ``handler(feeds) -> knowledge`` until every
        student said goodbye."""
        opts = options or ServeOptions()

        def reply(query: PendingQuery, answer: Chunk | None, error: str | None) -> None:
            peer = self._peers.get(query.cid)
            if peer is not None:
                if answer is not None:  # an error raised here is the query's answer
                    self._learn_desc(answer)
                    assert self.described.desc is not None
                    where = f"the answer to query {query.qid}"
                    check_batch(answer.data, self.described.desc, where=where)
                send_answer(peer, query, answer, error, self.described.codecs, self._stats)

        self._batcher = QueryBatcher(
            handler, reply, max_batch=opts.max_batch, max_delay=opts.max_delay
        )
        machine = TeacherMachine(queries=True, groups=opts.groups, max_students=self._max_students)
        try:
            self._serve(machine)
        finally:
            self._batcher.stop()
            self._batcher = None

    def wait_for_student(self, timeout: float) -> None:
        """Block until a student has connected and authenticated (at most ``timeout`` s): one
        is connected now, or one came since the last wait returned (a student may connect,
        say it is done and leave before the teacher's program gets here)."""

        def student() -> bool:
            self._check_open()
            return self._arrivals > self._arrivals_waited or any(
                p.hello.role == "student" for p in self._peers.values()
            )

        with self._cond:
            if not wait_until(self._cond, student, Deadline(timeout)):
                raise PantheonTimeoutError(
                    f"no student connected to the teacher at {self.address} within {timeout:g} s; "
                    "start the student with register_teacher(in_address=...) pointing here"
                )
            self._arrivals_waited = self._arrivals

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Teacher is closed")

    # ------------------------------------------------------------------ user messages

    def send_user(self, data: Any, timeout: float) -> None:
        """Send one user message to every connected student (waits for one up to ``timeout`` s)."""
        head, frames = user_message(data)
        self.wait_for_student(timeout)
        with self._cond:
            peers = [p for p in self._peers.values() if p.hello.role == "student"]
        for peer in peers:
            peer.send(MsgType.USER, head, frames)

    def recv_user(self, timeout: float) -> Any:
        """The next user message from a student."""
        return self._inbox.get(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters: batches, samples, messages and bytes sent, chunks predicted."""
        out: dict[str, Any] = self._stats.snapshot()
        with self._cond:
            if self._runner is not None:
                out["backpressure_seconds"] += self._runner.wait_seconds
            out["students"] = sum(p.hello.role == "student" for p in self._peers.values())
        return out

    def close(self) -> None:
        """Stop listening and close every connection (each is told goodbye)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            peers = list(self._peers.values())
            runner = self._runner
            self._cond.notify_all()
        if runner is not None:
            runner.stop_all()
        self._acceptor.close()
        self._listener.close()
        for peer in peers:
            peer.close_after_sends()
