"""The online teacher: listens, authenticates students, streams rounds with credits.

One student is served at a time; a newly authenticated student replaces the previous one.
The serving thread (the user's, inside ``serve_rounds`` / ``serve_queries``) takes requests
the session's reader thread queued, and streams with at most ``credits`` DATA messages
unacknowledged. See docs/protocol.md for the messages.
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._codecs import Codec, resolve_codecs
from .._errors import (
    ClosedError,
    ConnectionLostError,
    PantheonError,
    PantheonTimeoutError,
    ProtocolError,
    TeacherError,
)
from .._knowledge import Chunk, Description, describe, normalize_batch
from .._util import Deadline, wait_until
from .._wire import (
    Connection,
    Heartbeat,
    Message,
    MsgType,
    Session,
    check_bind,
    decode_value,
    encode_value,
    listen,
    resolve_token,
    server_handshake,
    take_message,
)
from .payload import decode_plain, encode_chunks
from .producer import Producer

__all__ = ["TeacherServer"]

log = logging.getLogger("pantheon")

_USER_INBOX = 1024  # unread user messages before the student is cut off
_REPLACED = "replaced by a newer student: a teacher serves one student at a time"


class TeacherServer:
    """The network side of an online :class:`~pantheon.Teacher`.

    Args:
        host: interface to bind (default loopback; anything else needs a token).
        port: TCP port (0 = any free port).
        token: shared secret (default ``PANTHEON_TOKEN``).
        timeout: seconds to wait for a student (to connect, to reconnect) before failing.
        use_fp16: send float knowledge as float16.
        codecs: per-key codecs.
        prefetch_batches: knowledge batches (or groups of small ones handed over together)
            produced ahead of sending, at most (default 10).
        heartbeat_interval / heartbeat_timeout: liveness, seconds (defaults 1 and 10).
        coalesce_bytes: small chunks ready together are sent as one message up to this size
            (default 256 KiB).
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
        coalesce_bytes: int = 256 * 1024,
    ) -> None:
        self._token = resolve_token(token)
        check_bind(host, self._token)
        self._timeout = timeout
        self._use_fp16 = use_fp16
        self._codec_args = dict(codecs)
        self._codecs: dict[str, Codec] = {}
        self._prefetch = prefetch_batches
        self._heartbeat = Heartbeat(heartbeat_interval, heartbeat_timeout)
        self._coalesce = coalesce_bytes
        self._desc: Description | None = None
        self._fingerprints: dict[str, str] = {}
        self._cond = threading.Condition()
        self._session: Session | None = None
        self._client = ""  # the current student's id (from its hello)
        self._replaced: set[str] = set()  # students replaced by a newer one: refused
        self._requests: collections.deque[tuple[Session, Message]] = collections.deque()
        self._credits = 0
        self._sub = -1
        self._done_round = -1
        self._times = 0
        self._inbox: queue.Queue[Any] = queue.Queue(maxsize=_USER_INBOX)
        self._closed = False
        self._stats = {
            "batches": 0,
            "samples": 0,
            "bytes": 0,
            "messages": 0,
            "credit_wait_seconds": 0.0,
        }
        self._listener = listen(host, port)
        self.address = self._listener.address
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="pantheon-accept", daemon=True
        )
        self._acceptor.start()

    # -- connections ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept(timeout=0.5)
            except PantheonTimeoutError:
                continue
            except (OSError, PantheonError):
                if self._closed:
                    return
                continue
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: Connection) -> None:
        try:
            hello = server_handshake(conn, self._token, timeout=self._heartbeat.timeout)
        except (OSError, PantheonError) as exc:
            log.warning("refused a connection from %s: %s", conn.peer, exc)
            conn.close()
            return
        client = str(hello.get("client", ""))
        if client and client in self._replaced:  # a replaced student trying to come back
            try:
                conn.send(MsgType.ERROR, {"message": _REPLACED}, timeout=self._heartbeat.timeout)
            except (OSError, PantheonError):
                pass
            conn.close()
            return
        session = Session(
            conn,
            name=f"student ({conn.peer})",
            on_message=self._on_message,
            on_close=self._on_close,
            heartbeat=self._heartbeat,
        )
        with self._cond:
            if self._closed:
                conn.close()
                return
            old, self._session = self._session, session
            if old is not None and self._client:
                self._replaced.add(self._client)
            self._client = client
            self._requests.clear()
            self._credits = 0
            self._sub = -1
            self._cond.notify_all()
        session.start()
        if old is not None:
            log.info("a new student (%s) replaces %s", conn.peer, old.name)
            self._send_error(old, _REPLACED)
            old.close()
        if self._desc is not None:
            self._send_desc(session)

    def _on_close(self, session: Session, reason: BaseException | None) -> None:
        with self._cond:
            if self._session is session:
                self._session = None
            self._cond.notify_all()
        if reason is not None and not self._closed:
            log.info("%s", reason)

    def _on_message(self, session: Session, msg: Message) -> None:
        with self._cond:
            current = self._session is session
        if not current:
            return
        t, h = msg.type, msg.header
        if t == MsgType.USER:
            try:
                self._inbox.put_nowait(decode_value(h.get("value"), msg.frames))
            except queue.Full:
                raise ProtocolError(
                    f"the student sent more than {_USER_INBOX} messages the teacher did not recv()"
                ) from None
        elif t == MsgType.CREDIT:
            with self._cond:
                if h.get("sub") == self._sub:
                    self._credits += int(h.get("n", 1))
                    self._cond.notify_all()
        elif t == MsgType.ROUND_DONE:
            with self._cond:
                self._done_round = max(self._done_round, int(h["round"]))
                self._cond.notify_all()
        elif t in (MsgType.SUBSCRIBE, MsgType.QUERY, MsgType.BYE):
            with self._cond:
                self._requests.append((session, msg))
                self._cond.notify_all()
        else:
            raise ProtocolError(f"unexpected message type {t!r} from a student")

    def wait_for_student(self, timeout: float) -> None:
        """Block until a student has connected and authenticated (at most ``timeout`` s)."""
        self._wait_session(timeout)

    def _wait_session(self, timeout: float) -> Session:
        def ready() -> bool:
            self._check_open()
            return self._session is not None

        with self._cond:
            if not wait_until(self._cond, ready, Deadline(timeout)):
                raise PantheonTimeoutError(
                    f"no student connected to the teacher at {self.address} within {timeout:g} s; "
                    "start the student with register_teacher(in_address=...) pointing here"
                )
            assert self._session is not None
            return self._session

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Teacher is closed")

    # -- description ----------------------------------------------------------------------

    def set_use_fp16(self, use_fp16: bool) -> None:
        """Change ``use_fp16`` before the description is known."""
        self._use_fp16 = use_fp16

    def set_fingerprints(self, fingerprints: Mapping[str, str]) -> None:
        """What the DESC message tells about the teacher (``fingerprint``,
        ``dataset_fingerprint``); sent again if the description is already known."""
        self._fingerprints = dict(fingerprints)
        with self._cond:
            session = self._session
        if self._desc is not None and session is not None:
            self._send_desc(session)

    def _learn_desc(self, chunk: Chunk) -> None:
        if self._desc is not None:
            return
        desc = describe(chunk.data)
        self._codecs = resolve_codecs(desc, self._codec_args, self._use_fp16)
        self._desc = desc
        with self._cond:
            session = self._session
        if session is not None:
            self._send_desc(session)

    def _send_desc(self, session: Session) -> None:
        header = {
            "desc": self._desc,
            "codecs": {k: c.spec() for k, c in self._codecs.items()},
            "times": self._times,
            **self._fingerprints,
        }
        try:
            session.send(MsgType.DESC, header)
        except ConnectionLostError:
            pass

    # -- serving rounds -------------------------------------------------------------------

    def serve_rounds(self, make_round: Callable[[int, int], Iterator[Chunk]], times: int) -> None:
        """Serve ``times`` rounds on request; return once the student acknowledged the last.

        ``make_round(round_index, start_sample)`` produces one round's chunks."""
        self._times = times
        self._done_round = -1
        first_producer = Producer(functools.partial(make_round, 0), 0, self._prefetch)
        ahead: tuple[int, Producer] | None = (0, first_producer)
        if self._desc is None:
            first = first_producer.peek(self._timeout)
            if first is not None:
                self._learn_desc(first)
        try:
            while True:
                request = self._next_request(lambda: self._done_round >= times - 1)
                if request is None:
                    return
                session, msg = request
                if msg.type != MsgType.SUBSCRIBE:
                    continue  # BYE: wait for the next student
                rnd, start = int(msg.header["round"]), int(msg.header["start"])
                if not 0 <= rnd < times:
                    self._send_error(
                        session,
                        f"this teacher serves {times} round(s) (0..{times - 1}); "
                        f"round {rnd} was requested",
                    )
                    continue
                producer: Producer
                if (
                    ahead is not None
                    and ahead[0] == rnd
                    and ahead[1].start_sample == start
                    and not ahead[1].touched
                ):
                    producer = ahead[1]
                else:
                    if ahead is not None:
                        ahead[1].stop()
                    producer = Producer(functools.partial(make_round, rnd), start, self._prefetch)
                ahead = None
                finished = self._stream(session, msg.header, producer)
                if finished and rnd + 1 < times:
                    ahead = (
                        rnd + 1,
                        Producer(functools.partial(make_round, rnd + 1), 0, self._prefetch),
                    )
        finally:
            if ahead is not None:
                ahead[1].stop()

    def _next_request(self, done: Callable[[], bool]) -> tuple[Session, Message] | None:
        """The next SUBSCRIBE/QUERY/BYE, or None once ``done()``; fails after ``timeout`` s
        without any student."""

        def ready() -> bool:
            self._check_open()
            return done() or bool(self._requests) or self._session is not None

        with self._cond:
            while True:
                if not wait_until(self._cond, ready, Deadline(self._timeout)):
                    raise TeacherError(
                        f"no student connected to the teacher at {self.address} for "
                        f"{self._timeout:g} s; giving up (raise Teacher(timeout=...) to wait longer)"
                    )
                if done():
                    return None
                if self._requests:
                    return self._requests.popleft()
                # a student is connected but has not asked for anything yet: wait on
                self._cond.wait(0.5)

    def _send_error(self, session: Session, message: str) -> None:
        try:
            session.send(MsgType.ERROR, {"message": message})
        except ConnectionLostError:
            pass

    def _interrupted(self, session: Session) -> bool:
        return self._session is not session or bool(self._requests) or self._closed

    def _stream(self, session: Session, request: Mapping[str, Any], producer: Producer) -> bool:
        """Stream one subscription; True if the round ended, False if interrupted."""
        sub, rnd = int(request["sub"]), int(request["round"])
        with self._cond:
            self._sub = sub
            self._credits = int(request.get("credits", 1))
        total = producer.start_sample
        try:
            while True:
                with self._cond:
                    if self._interrupted(session):
                        return False
                try:
                    item = producer.take(self._coalesce, timeout=0.2)
                except BaseException as exc:
                    self._send_error(
                        session, f"the teacher failed while producing round {rnd}: {exc!r}"
                    )
                    raise
                if item is Producer.TIMEOUT:
                    continue
                if item is None:
                    session.send(MsgType.END_ROUND, {"sub": sub, "round": rnd, "samples": total})
                    return True
                assert isinstance(item, list)
                try:
                    self._learn_desc(item[0])
                    header, frames = encode_chunks(item, self._codecs)
                except PantheonError as exc:
                    self._send_error(session, f"the teacher cannot send round {rnd}: {exc}")
                    raise
                if not self._take_credit(session):
                    return False
                header.update(sub=sub, round=rnd)
                session.send(MsgType.DATA, header, frames)
                n = sum(len(c.ids) for c in item)
                total += n
                self._stats["batches"] += len(item)
                self._stats["samples"] += n
                self._stats["messages"] += 1
                self._stats["bytes"] += sum(memoryview(f).nbytes for f in frames)
        except ConnectionLostError:
            return False
        finally:
            producer.stop()

    def _take_credit(self, session: Session) -> bool:
        t0 = time.perf_counter()
        with self._cond:
            wait_until(
                self._cond,
                lambda: self._credits > 0 or self._interrupted(session),
                Deadline(None),
            )
            if self._credits <= 0:
                return False
            self._credits -= 1
        self._stats["credit_wait_seconds"] += time.perf_counter() - t0
        return True

    # -- query mode -----------------------------------------------------------------------

    def serve_queries(self, handler: Callable[[dict[str, Any]], Mapping[str, Any]]) -> None:
        """Answer the student's queries with ``handler(feeds) -> knowledge`` until it says BYE."""
        while True:
            request = self._next_request(lambda: False)
            assert request is not None
            session, msg = request
            if msg.type == MsgType.BYE:
                return
            if msg.type != MsgType.QUERY:
                self._send_error(session, "this teacher only answers queries (it has no reader)")
                continue
            qid = msg.header["qid"]
            try:
                feeds = decode_plain(msg.header, msg.frames)
                knowledge, n = normalize_batch(
                    handler(dict(feeds.data)), where=f"answer to query {qid}"
                )
            except Exception as exc:
                self._send_error(session, f"query {qid} failed on the teacher: {exc!r}")
                raise
            if n != len(feeds.ids):
                raise TeacherError(
                    f"the query handler returned {n} samples for a query of {len(feeds.ids)}"
                )
            chunk = Chunk(feeds.ids, knowledge)
            self._learn_desc(chunk)
            header, frames = encode_chunks([chunk], self._codecs)
            header["qid"] = qid
            try:
                session.send(MsgType.ANSWER, header, frames)
            except ConnectionLostError:
                continue
            self._stats["batches"] += 1
            self._stats["samples"] += n

    # -- user messages --------------------------------------------------------------------

    def send_user(self, data: Any, timeout: float) -> None:
        """Send one user message to the current student (waits for one up to ``timeout`` s)."""
        value, frames = encode_value(data)
        self._wait_session(timeout).send(MsgType.USER, {"value": value}, frames)

    def recv_user(self, timeout: float) -> Any:
        """The next user message from the student."""
        return take_message(self._inbox, timeout, "the student (Teacher.recv)")

    def stats(self) -> dict[str, Any]:
        """Counters: batches, samples, messages and bytes sent, seconds waiting for credits."""
        return dict(self._stats)

    def close(self) -> None:
        """Stop listening and close the student's connection."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            session, self._session = self._session, None
            self._cond.notify_all()
        self._listener.close()
        if session is not None:
            try:
                session.send(MsgType.BYE)
            except ConnectionLostError:
                pass
            session.close()
