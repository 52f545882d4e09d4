"""The student's side of an online teacher: connection(s), reconnection, rounds, queries.

An :class:`OnlineSource` holds one :class:`Link` per address of the teacher (several
addresses = replicas of one model). Streaming uses the first connected link; when it dies the
round is re-subscribed, on the same address once the teacher is back or on another replica,
from the first sample the student does not hold yet: nothing lost, nothing duplicated.
Queries are spread over every connected replica and re-sent when one dies.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .._codecs import Codec, codec_from_spec
from .._errors import (
    ConfigError,
    ConnectionLostError,
    PantheonError,
    PantheonTimeoutError,
    ProtocolError,
    TeacherError,
)
from .._knowledge import FINGERPRINT_KEYS, Chunk, Description
from .._util import Deadline, wait_until
from .._wire import (
    Heartbeat,
    Message,
    MsgType,
    Session,
    decode_value,
    encode_value,
    parse_address,
    resolve_token,
    take_message,
)
from .link import Link
from .payload import decode_payload, encode_chunks

__all__ = ["OnlineSource"]

log = logging.getLogger("pantheon")
_SUBS = itertools.count(1)


class _OnlineRound:
    """One round being streamed from an online teacher."""

    def __init__(self, source: OnlineSource, round_index: int, start: int) -> None:
        self.source = source
        self.round = round_index
        self.next_sample = start  # first sample not yet held by the student
        self.sub = -1
        self.link: Link | None = None
        self.session: Session | None = None  # the session the subscription was sent on
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.ended = False
        self.closed = False
        self.consumed = 0  # taken since the last CREDIT

    def next_chunk(self, timeout: float) -> Chunk | None:
        src = self.source
        deadline = Deadline(timeout)

        def ready() -> bool:
            if self.chunks or self.ended:
                return True
            if src.error is not None:
                raise src.error
            return False

        with src.cond:
            while not wait_until(src.cond, ready, deadline):
                if not src.reconnecting():
                    raise PantheonTimeoutError(
                        f"{src.name} sent no knowledge for {timeout:g} s in round {self.round}; "
                        "raise Student(timeout=...) for slow teachers"
                    )
                # a reconnection has its own deadline, after which it names the teacher
                deadline = Deadline(0.5)
            if not self.chunks:
                return None
            chunk = self.chunks.popleft()
            self.consumed += 1
            grant = self.consumed >= max(1, src.credits // 2)
            link, sub = self.link, self.sub
            if grant:
                n, self.consumed = self.consumed, 0
        if grant and link is not None and link.session is not None:
            try:
                link.session.send(MsgType.CREDIT, {"sub": sub, "n": n})
            except ConnectionLostError:
                pass  # re-subscribing grants fresh credits
        return chunk

    def close(self) -> None:
        src = self.source
        with src.cond:
            self.closed = True
            if src.round is self:
                src.round = None


class OnlineSource:
    """An online teacher (one address, or several replicas), as the student sees it.

    Args:
        index: the teacher id.
        address: ``"host:port"`` or a list of replica addresses.
        token: shared secret (default ``PANTHEON_TOKEN``).
        timeout: seconds to wait to connect, for the description, and to reconnect before
            declaring the teacher gone.
        credits: DATA messages the teacher may have in flight (default 8).
        heartbeat: liveness settings.
    """

    def __init__(
        self,
        index: int,
        address: str | Sequence[str],
        *,
        token: str | bytes | None,
        timeout: float,
        credits: int = 8,
        heartbeat: Heartbeat | None = None,
        sparse_topk: bool = False,
        client_id: str | None = None,
    ) -> None:
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ConfigError("in_address needs at least one 'host:port'")
        for a in addresses:
            parse_address(a)
        self.index = index
        self.client_id = client_id or uuid.uuid4().hex
        self.sparse_topk = sparse_topk
        self.name = f"teacher {index} ({', '.join(addresses)})"
        self.token = resolve_token(token)
        self.timeout = timeout
        self.credits = max(1, credits)
        self.heartbeat = heartbeat or Heartbeat()
        self.stopped = threading.Event()  # set by close(): reconnection attempts end
        self.links = [Link(self, a) for a in addresses]
        self.cond = threading.Condition()
        self.desc_: Description | None = None
        self.fingerprints_: dict[str, str] = {}
        self.codecs: dict[str, Codec] = {}
        self.times = 0
        self.round: _OnlineRound | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.answers: dict[int, Chunk | BaseException] = {}
        self._stats = {"bytes": 0, "reconnects": 0}

    # -- connecting -----------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        deadline = Deadline(timeout)
        errors: list[BaseException] = []
        for link in self.links:
            try:
                link.connect(deadline if not errors else Deadline(1.0))
            except TeacherError as exc:
                errors.append(exc)
        if len(errors) == len(self.links):
            raise errors[0]

    def _start_reconnect(self, link: Link) -> None:
        """Reconnect ``link`` in the background unless it already does. Holds ``cond``."""
        if link.reconnecting or link.session is not None or self.closed:
            return
        link.reconnecting = True
        link.said_bye = False
        self.cond.notify_all()
        threading.Thread(target=self._reconnect, args=(link,), daemon=True).start()

    def _reconnect(self, link: Link) -> None:
        try:
            link.connect(Deadline(self.timeout))
        except PantheonError as exc:
            with self.cond:
                link.reconnecting = False
                if all(lk.session is None and not lk.reconnecting for lk in self.links):
                    self.error = TeacherError(
                        f"{self.name} is gone: no connection for {self.timeout:g} s ({exc})"
                    )
                self.cond.notify_all()
            return
        with self.cond:
            link.reconnecting = False
            self._stats["reconnects"] += 1
            self.cond.notify_all()
            parked: dict[int, Chunk] = {}
            for lk in self.links:
                if lk.session is None:
                    parked.update(lk.outstanding)
                    lk.outstanding.clear()
        for qid, query in sorted(parked.items()):
            self._send_query(qid, query)
        self._resume(link)

    def on_close(self, link: Link, session: Session, reason: BaseException | None) -> None:
        with self.cond:
            if link.session is session:
                link.session = None
            lost_queries = dict(link.outstanding)
            link.outstanding.clear()
            if self.closed or self.error is not None:  # closed, or the teacher refused us
                self.cond.notify_all()
                return
            busy = bool(lost_queries) or (self.round is not None and not self.round.ended)
            if link.said_bye and not busy:
                self.cond.notify_all()
                return  # the teacher finished; reconnect when a round or query needs it
            self._start_reconnect(link)
        log.warning("%s; reconnecting", reason or f"lost {link.address}")
        for qid, query in lost_queries.items():
            self._send_query(qid, query)
        self._resume(None)

    def _resume(self, connected: Link | None) -> None:
        """Re-subscribe the current round if its link is gone (after a reconnect / fail-over)."""
        with self.cond:
            rnd = self.round
            if rnd is None or rnd.ended or rnd.closed:
                return
            if rnd.session is not None and rnd.session.alive:
                return
            link = connected if connected is not None and connected.session else self._connected()
            if link is None:
                return
            self._subscribe(rnd, link)

    def reconnecting(self) -> bool:
        """Whether no link is connected and one is trying to reconnect (holds ``cond``)."""
        return self._connected() is None and any(lk.reconnecting for lk in self.links)

    def _connected(self) -> Link | None:
        for link in self.links:
            if link.session is not None:
                return link
        return None

    # -- messages -------------------------------------------------------------------------

    def on_message(self, link: Link, session: Session, msg: Message) -> None:
        t, h = msg.type, msg.header
        if t == MsgType.DATA:
            self._on_data(link, msg)
        elif t == MsgType.END_ROUND:
            with self.cond:
                rnd = self.round
                if rnd is not None and h.get("sub") == rnd.sub:
                    rnd.ended = True
                    self.cond.notify_all()
        elif t == MsgType.DESC:
            with self.cond:
                self.codecs = {
                    k: codec_from_spec(s) for k, s in dict(h.get("codecs") or {}).items()
                }
                self.desc_ = {k: dict(v) for k, v in dict(h["desc"]).items()}
                self.times = int(h.get("times", 0))
                self.fingerprints_ = {
                    k: h[k] for k in FINGERPRINT_KEYS if isinstance(h.get(k), str)
                }
                self.cond.notify_all()
        elif t == MsgType.USER:
            self.inbox.put(decode_value(h.get("value"), msg.frames))
        elif t == MsgType.ANSWER:
            self._on_answer(link, msg)
        elif t == MsgType.BYE:
            link.said_bye = True
        elif t == MsgType.ERROR:
            with self.cond:
                self.error = TeacherError(f"{self.name} reported: {h.get('message', 'an error')}")
                self.cond.notify_all()
        else:
            raise ProtocolError(f"unexpected message type {t!r} from {self.name}")

    def _decode(self, msg: Message) -> Chunk:
        desc = self.desc_
        if desc is None:
            raise ProtocolError(f"{self.name} sent knowledge before its description")
        self._stats["bytes"] += sum(memoryview(f).nbytes for f in msg.frames)
        return decode_payload(msg.header, msg.frames, desc, self.codecs, sparse=self.sparse_topk)

    def _on_data(self, link: Link, msg: Message) -> None:
        with self.cond:
            rnd = self.round
            if rnd is None or msg.header.get("sub") != rnd.sub or rnd.link is not link:
                return  # stale: an abandoned or re-subscribed stream
        chunk = self._decode(msg)
        with self.cond:
            if rnd.closed or msg.header.get("sub") != rnd.sub:
                return
            if len(chunk.ids) and int(chunk.ids[0]) != rnd.next_sample:
                raise ProtocolError(
                    f"{self.name} sent sample {int(chunk.ids[0])} where {rnd.next_sample} was expected"
                )
            rnd.next_sample += len(chunk.ids)
            rnd.chunks.append(chunk)
            self.cond.notify_all()

    def _on_answer(self, link: Link, msg: Message) -> None:
        qid = int(msg.header["qid"])
        chunk = self._decode(msg)
        with self.cond:
            if link.outstanding.pop(qid, None) is not None:
                self.answers[qid] = chunk
                self.cond.notify_all()

    # -- Source protocol ------------------------------------------------------------------

    def desc(self, timeout: float) -> Description:
        def ready() -> bool:
            if self.error is not None:
                raise self.error
            return self.desc_ is not None

        with self.cond:
            if not wait_until(self.cond, ready, Deadline(timeout)):
                raise PantheonTimeoutError(
                    f"{self.name} did not send its knowledge description within {timeout:g} s "
                    "(it knows it once it produced its first batch; in query mode, after the "
                    "first query)"
                )
            assert self.desc_ is not None
            return self.desc_

    def fingerprints(self) -> dict[str, str]:
        """The teacher's fingerprints from its DESC message (empty before it, or if none)."""
        return dict(self.fingerprints_)

    def open_round(self, round_index: int, start_sample: int) -> _OnlineRound:
        rnd = _OnlineRound(self, round_index, start_sample)
        with self.cond:
            if self.error is not None:
                raise self.error
            if self.round is not None:
                self.round.closed = True
            self.round = rnd
            link = self._connected()
            if link is not None:
                self._subscribe(rnd, link)
            else:
                for lk in self.links:
                    self._start_reconnect(lk)
        return rnd

    def _subscribe(self, rnd: _OnlineRound, link: Link) -> None:
        """(Re-)subscribe ``rnd`` on ``link`` from the first sample not held. Holds ``cond``."""
        rnd.sub = next(_SUBS)
        rnd.link = link
        rnd.consumed = 0
        header = {
            "sub": rnd.sub,
            "round": rnd.round,
            "start": rnd.next_sample,
            "credits": max(1, self.credits - len(rnd.chunks)),
        }
        session = link.session
        rnd.session = session
        if session is not None:
            try:
                session.send(MsgType.SUBSCRIBE, header)
            except ConnectionLostError:
                rnd.link = rnd.session = None

    def ack_round(self, round_index: int) -> None:
        """Tell the teacher(s) that the student holds every sample of ``round_index``."""
        for link in self.links:
            session = link.session
            if session is not None:
                try:
                    session.send(MsgType.ROUND_DONE, {"round": round_index})
                except ConnectionLostError:
                    pass

    # -- queries --------------------------------------------------------------------------

    def _send_query(self, qid: int, query: Chunk) -> None:
        with self.cond:
            live = [lk for lk in self.links if lk.session is not None]
            if not live:
                # no replica now: keep it on the first link, re-sent when one comes back
                self.links[0].outstanding[qid] = query
                for lk in self.links:
                    self._start_reconnect(lk)
                return
            link = min(live, key=lambda lk: len(lk.outstanding))
            link.outstanding[qid] = query
            session = link.session
        header, frames = encode_chunks([query], {})
        header["qid"] = qid
        assert session is not None
        try:
            session.send(MsgType.QUERY, header, frames)
        except ConnectionLostError:
            pass  # on_close re-sends the link's outstanding queries

    def submit(self, qid: int, query: Chunk) -> None:
        """Send a query (the student's own feed batch); the answer comes from :meth:`answer`."""
        self._send_query(qid, query)

    def answer(self, qid: int, timeout: float) -> Chunk:
        """The knowledge answering query ``qid`` (waits at most ``timeout`` s)."""

        def ready() -> bool:
            if qid in self.answers:
                return True
            if self.error is not None:
                raise self.error
            return False

        with self.cond:
            if not wait_until(self.cond, ready, Deadline(timeout)):
                raise PantheonTimeoutError(
                    f"{self.name} did not answer query {qid} within {timeout:g} s"
                )
            result = self.answers.pop(qid)
        if isinstance(result, BaseException):
            raise result
        return result

    # -- user messages --------------------------------------------------------------------

    def send_user(self, data: Any, timeout: float) -> None:
        value, frames = encode_value(data)
        deadline = Deadline(timeout)

        def ready() -> bool:
            if self._connected() is not None:
                return True
            if self.error is not None:
                raise self.error
            return False

        while True:
            with self.cond:
                if not wait_until(self.cond, ready, deadline):
                    raise PantheonTimeoutError(
                        f"{self.name} is not connected; could not send within {timeout:g} s"
                    )
                link = self._connected()
                assert link is not None
                session = link.session
            assert session is not None
            try:
                session.send(MsgType.USER, {"value": value}, frames)
                return
            except ConnectionLostError:
                continue

    def recv_user(self, timeout: float) -> Any:
        return take_message(self.inbox, timeout, f"{self.name} (Student.recv)")

    def stats(self) -> Mapping[str, Any]:
        return dict(self._stats)

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.stopped.set()
            self.cond.notify_all()
        for link in self.links:
            session = link.session
            if session is not None:
                try:
                    session.send(MsgType.BYE)
                except ConnectionLostError:
                    pass
                session.close()
