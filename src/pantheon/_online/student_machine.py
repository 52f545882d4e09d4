"""The student's side of the online protocol for one teacher, as a sans-IO state machine.

:class:`StudentMachine` knows the teacher's links (one per replica address), its description,
the round being streamed (subscription, the next sample expected, the chunks received and
not yet taken, credits) and the queries in flight. It does no I/O: the driver
(:mod:`.source`) feeds it what happened (a link came up or went down, a message arrived, the
training loop took a chunk) and carries out the actions it returns (:class:`Transmit`,
:class:`Reconnect`).

The rules:

* **Shards.** Rank ``r`` of ``W`` holds the round's samples ``r, r + W, r + 2W, ...``; its
  *position* ``p`` (samples of its shard handed out) is the round's sample ``r + p W``.
* **Exactly once.** Every id of every chunk is checked: a chunk must hold exactly the next
  samples of the shard, and END_ROUND's sample count must match what arrived. A teacher
  that breaks this is a :class:`~pantheon.ProtocolError`, never a silent mix.
* **Resume.** When a link goes down in a round, the round is subscribed again (on another
  replica, or on the same address once it is back) from the first sample not held, with
  credits for the room left in the buffer.
* **Credits.** The student returns credits in groups of half its window as the training loop
  takes chunks, so at most ``credits`` messages wait on its side. With a byte window it also
  returns them once it took half the window's bytes, or took every chunk it held (the
  teacher counts bytes as it produced them, before codecs: the student's own count of what
  it took cannot be what frees the teacher).
* **Queries.** Each goes to the live link with the fewest queries in flight; the queries of a
  link that went down are sent again elsewhere (or parked until a link is back).
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._chunks import chunk_nbytes
from .._codecs import Codec, codec_from_spec
from .._errors import ConfigError, PantheonError, ProtocolError, TeacherError
from .._knowledge import Chunk, Description
from .messages import Credit, Desc, EndRound, ErrorCode, Event, Fail, Query, RoundDone, Subscribe

__all__ = ["Reconnect", "RoundState", "StudentMachine", "Transmit"]

_SUBS = itertools.count(1)  # subscription ids, unique in the process


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``event`` on link ``link`` (a QUERY carries ``chunk``)."""

    link: int
    event: Event
    chunk: Chunk | None = None


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Reconnect link ``link`` (in the background)."""

    link: int


Action = Transmit | Reconnect


@dataclass(eq=False)
class RoundState:
    """One round being streamed."""

    round: int
    next: int  # the next sample id expected (of this rank's shard)
    sub: int = -1
    link: int | None = None
    chunks: collections.deque[Chunk] = field(default_factory=collections.deque)
    ended: bool = False
    samples: int | None = None  # the round's total, from END_ROUND
    frontier: int = 0  # samples of the round the teacher has produced, as far as known
    taken: int = 0  # chunks taken since the last CREDIT
    taken_bytes: int = 0  # their bytes
    granted: int = 0  # DATA messages the subscription may carry: its room and the CREDITs since
    received: int = 0  # DATA messages it carried
    closed: bool = False
    first: int = 0  # the sample id the round was opened at
    error: BaseException | None = None  # why the round cannot be read (raised to the loop)


@dataclass(eq=False)
class _Link:
    up: bool = False
    reconnecting: bool = False
    said_bye: bool = False
    retired: bool = False  # its replica left the pool (scaled down): never reconnected
    outstanding: dict[int, Chunk] = field(default_factory=dict)


class StudentMachine:
    """One online teacher as the student's protocol sees it (see the module docstring).

    Args:
        name: the teacher's name in messages (``"teacher 0 (host:port)"``).
        links: how many addresses (replicas) the teacher has.
        rank / world_size: this student's shard of every round.
        credits: DATA messages the teacher may have in flight (>= 1).
        window: bytes of knowledge the teacher may have in flight (0: no byte bound).
    """

    def __init__(
        self,
        name: str,
        links: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        credits: int = 16,
        window: int = 0,
    ) -> None:
        self.name = name
        self.rank = rank
        self.world = world_size
        self.credits = max(1, credits)
        self.window = max(0, window)
        self.links = [_Link() for _ in range(links)]
        self.desc: Description | None = None
        self.codecs: dict[str, Codec] = {}
        self.times = 0
        self.extra: dict[str, Any] = {}
        self.round: RoundState | None = None
        self.error: BaseException | None = None
        self.answers: dict[int, Chunk | BaseException] = {}
        self.acked: list[int] = []  # rounds acknowledged: told again on every new connection
        self.closed = False

    # ------------------------------------------------------------------ positions

    def sample_of(self, position: int) -> int:
        """The round's sample id at this rank's ``position`` in its shard."""
        return self.rank + position * self.world

    def shard_count(self, samples: int, start: int) -> int:
        """How many samples of this rank's shard lie in ``[start, samples)``."""
        first = start + (self.rank - start) % self.world
        return max(0, -(-(samples - first) // self.world))

    # ------------------------------------------------------------------ links

    def live(self) -> int | None:
        """A link that is up (the first), or None."""
        return next((i for i, lk in enumerate(self.links) if lk.up), None)

    def reconnecting(self) -> bool:
        """Whether no link is up and one is trying to come back."""
        return self.live() is None and any(lk.reconnecting for lk in self.links)

    def link_up(self, link: int) -> list[Action]:
        """Link ``link`` connected and authenticated."""
        lk = self.links[link]
        actions: list[Action] = []
        parked: dict[int, Chunk] = {}
        for other in self.links:
            if not other.up:  # this link too: what it holds was parked or lost while down
                parked.update(other.outstanding)
                other.outstanding.clear()
        lk.up, lk.reconnecting, lk.said_bye = True, False, False
        for qid in sorted(parked):
            actions += self._send_query(qid, parked[qid])
        # acknowledgements may have been lost with the old connection (they are idempotent)
        actions += [Transmit(link, RoundDone(r)) for r in self.acked]
        return actions + self._resume(link)

    def link_down(self, link: int, reason: BaseException | None) -> list[Action]:
        """Link ``link`` closed; ``reason`` says why (None: this side closed it)."""
        lk = self.links[link]
        lk.up = False
        lost = dict(lk.outstanding)
        lk.outstanding.clear()
        if self.closed or self.error is not None:
            return []
        if isinstance(reason, ProtocolError):
            self.error = reason  # reconnecting cannot mend a teacher that breaks the protocol
            return []
        rnd = self.round
        busy = bool(lost) or (rnd is not None and not rnd.ended and not rnd.closed)
        actions: list[Action] = []
        if not lk.retired and not (lk.said_bye and not busy):
            actions.append(self._reconnect(link))
        if busy and self.live() is None:  # replicas given up on, or never reached: try them
            actions += self._reconnect_all()
        for qid in sorted(lost):
            actions += self._send_query(qid, lost[qid])
        return actions + self._resume(None)

    def not_reached(self, link: int) -> list[Action]:
        """Link ``link`` could not connect at the start (its replica was not up yet, while
        another was): it is connected in the background, to be there for a fail-over."""
        lk = self.links[link]
        if lk.up or lk.reconnecting or lk.retired or self.closed:
            return []
        return [self._reconnect(link)]

    def reconnect_failed(self, link: int, error: BaseException) -> None:
        """A reconnection gave up; the teacher is gone once no link is left."""
        self.links[link].reconnecting = False
        if isinstance(error, (ProtocolError, ConfigError)) or not isinstance(error, PantheonError):
            self.error = self.error or error
        elif all(not lk.up and not lk.reconnecting for lk in self.links):
            self.error = self.error or TeacherError(f"{self.name} is gone: {error}")

    def add_link(self) -> int:
        """A replica joined the pool: a new link, connecting (the driver connects it)."""
        self.links.append(_Link(reconnecting=True))
        return len(self.links) - 1

    def retire(self, link: int) -> list[Action]:
        """Link ``link``'s replica left the pool for good: it is not reconnected, and what it
        carried goes to the links left (or is parked until one is up)."""
        lk = self.links[link]
        lk.up = lk.reconnecting = False
        lk.retired = True
        lost = dict(lk.outstanding)
        lk.outstanding.clear()
        actions: list[Action] = []
        for qid in sorted(lost):
            actions += self._send_query(qid, lost[qid])
        return actions + self._resume(None)

    def _reconnect(self, link: int) -> Reconnect:
        self.links[link].reconnecting = True
        self.links[link].said_bye = False
        return Reconnect(link)

    # ------------------------------------------------------------------ messages

    def on_desc(self, event: Desc) -> None:
        """The teacher's description (sent on every connection)."""
        try:
            codecs = {k: codec_from_spec(s) for k, s in event.codecs.items()}
        except ConfigError as exc:
            raise ProtocolError(f"{self.name} sent a description with a bad codec: {exc}") from None
        self.desc, self.codecs, self.times = event.desc, codecs, event.times
        self.extra = dict(event.extra)

    def on_fail(self, event: Fail) -> None:
        """An ERROR: the teacher refuses, failed, or a newer student replaced this one."""
        detail = f"{self.name} reported: {event.message}"
        if event.qid is not None:  # one query failed; the teacher serves on
            for lk in self.links:
                lk.outstanding.pop(event.qid, None)
            self.answers[event.qid] = TeacherError(detail)
            return
        if event.code == ErrorCode.ROUNDS:
            detail += " (the teacher serves fewer rounds than this student asked for)"
        self.error = self.error or TeacherError(detail)

    def on_bye(self, link: int) -> None:
        """The teacher closed on purpose: reconnect only when a round or query needs it."""
        self.links[link].said_bye = True

    def on_data(self, link: int, sub: int, upto: int, chunk: Chunk) -> None:
        """A DATA message's chunk (decoded, checked against the description)."""
        rnd = self.round
        if rnd is None or rnd.closed or sub != rnd.sub or rnd.link != link:
            return  # stale: an abandoned or re-subscribed stream
        if rnd.ended:
            raise ProtocolError(
                f"{self.name} sent knowledge of round {rnd.round} after it ended the round"
            )
        rnd.received += 1
        if rnd.received > rnd.granted:  # the student's memory is bounded by its credits
            raise ProtocolError(
                f"{self.name} sent {rnd.received} knowledge messages in round {rnd.round} "
                f"where this student gave it credit for {rnd.granted}: a teacher must wait "
                "for credits"
            )
        ids = chunk.ids
        n = len(ids)
        want = np.arange(rnd.next, rnd.next + n * self.world, self.world, dtype=np.int64)
        if n == 0 or not np.array_equal(ids, want):
            got = ids[: min(n, 6)].tolist()
            raise ProtocolError(
                f"{self.name} sent sample ids {got}{'...' if n > 6 else ''} in round {rnd.round} "
                f"where {want[: min(n, 6)].tolist()} were expected (rank {self.rank} of "
                f"{self.world}): every sample exactly once, in order"
            )
        rnd.next += n * self.world
        rnd.frontier = max(rnd.frontier, upto, rnd.next - self.world + 1)
        rnd.chunks.append(chunk)

    def on_end(self, link: int, event: EndRound) -> None:
        """END_ROUND: the subscription is complete; checks that nothing is missing."""
        rnd = self.round
        if rnd is None or rnd.closed or event.sub != rnd.sub or rnd.link != link:
            return
        if rnd.next < event.samples:  # the shard's last samples never came
            raise ProtocolError(
                f"{self.name} ended round {rnd.round} at {event.samples} samples, but sample "
                f"{rnd.next} of rank {self.rank}'s shard never came: the round was cut short"
            )
        if rnd.next == rnd.first and rnd.next - self.world >= event.samples:
            count = self.shard_count(event.samples, 0)
            rnd.error = ConfigError(
                f"{self.name}: this student was opened at position {(rnd.first - self.rank) // self.world} "
                f"of round {rnd.round} (sample {rnd.first}), past the end of the round: it has "
                f"{event.samples} samples, {count} of rank {self.rank}'s shard; the state_dict "
                "loaded belongs to other knowledge, or the teacher's reader changed"
            )
            rnd.ended, rnd.samples = True, event.samples
            return
        if rnd.next - self.world >= event.samples:
            raise ProtocolError(
                f"{self.name} sent sample {rnd.next - self.world} of round {rnd.round}, which "
                f"it then said has only {event.samples} samples"
            )
        rnd.ended, rnd.samples = True, event.samples
        rnd.frontier = max(rnd.frontier, event.samples)

    def on_answer(self, link: int, qid: int, chunk: Chunk) -> None:
        """An ANSWER to query ``qid``."""
        query = self.links[link].outstanding.pop(qid, None)
        if query is None:
            return  # answered twice (re-sent after a fail-over): keep the first
        if not np.array_equal(chunk.ids, query.ids):
            raise ProtocolError(
                f"{self.name} answered query {qid} with other sample ids than asked"
            )
        self.answers[qid] = chunk

    # ------------------------------------------------------------------ rounds

    def open_round(self, rnd: int, position: int) -> list[Action]:
        """Start streaming round ``rnd`` from this rank's ``position`` in its shard.

        Raises:
            TeacherError: the teacher said earlier it serves fewer rounds, or failed.
        """
        if self.error is not None:
            raise self.error
        if self.times and rnd >= self.times:
            raise TeacherError(
                f"{self.name} served its {self.times} round(s) (times={self.times}); this is "
                f"round {rnd}: call get_knowledge_generator() at most times={self.times} "
                "times, or serve more rounds"
            )
        if self.round is not None:
            self.round.closed = True
        first = self.sample_of(position)
        self.round = RoundState(rnd, first, first=first)
        link = self.live()
        if link is None:
            return self._reconnect_all()
        return self._subscribe(self.round, link)

    def _subscribe(self, rnd: RoundState, link: int) -> list[Action]:
        rnd.sub, rnd.link, rnd.taken, rnd.taken_bytes = next(_SUBS), link, 0, 0
        room = max(1, self.credits - len(rnd.chunks))
        rnd.granted, rnd.received = room, 0
        held = sum(chunk_nbytes(c) for c in rnd.chunks) if self.window else 0
        window = max(1, self.window - held) if self.window else 0
        return [Transmit(link, Subscribe(rnd.sub, rnd.round, rnd.next, room, window))]

    def _resume(self, connected: int | None) -> list[Action]:
        rnd = self.round
        if rnd is None or rnd.ended or rnd.closed:
            return []
        if rnd.link is not None and self.links[rnd.link].up:
            return []
        link = connected if connected is not None and self.links[connected].up else self.live()
        if link is None:
            rnd.link = None
            return []
        return self._subscribe(rnd, link)

    def take(self) -> tuple[Chunk | None, list[Action]]:
        """The next chunk of the round (None: none waiting), and the CREDIT to return."""
        rnd = self.round
        if rnd is None or not rnd.chunks:
            return None, []
        chunk = rnd.chunks.popleft()
        rnd.taken += 1
        due = rnd.taken >= max(1, self.credits // 2)
        if self.window:
            rnd.taken_bytes += chunk_nbytes(chunk)
            due = due or not rnd.chunks or 2 * rnd.taken_bytes >= self.window
        if not due or rnd.link is None or not self.links[rnd.link].up:
            return chunk, []
        n, rnd.taken, rnd.taken_bytes = rnd.taken, 0, 0
        rnd.granted += n
        return chunk, [Transmit(rnd.link, Credit(rnd.sub, n))]

    def close_round(self, rnd: RoundState) -> None:
        """The training loop abandoned ``rnd`` (a later subscription replaces it)."""
        rnd.closed = True
        if self.round is rnd:
            self.round = None

    def ack_round(self, rnd: int) -> list[Action]:
        """The training loop consumed all of round ``rnd``: tell every live link (and every
        link that comes up later: a link down now may be the one that serves it)."""
        if rnd not in self.acked:
            self.acked.append(rnd)
        return [Transmit(i, RoundDone(rnd)) for i, lk in enumerate(self.links) if lk.up]

    def leaving(self) -> list[Action]:
        """What to tell before this student's goodbye: the rounds acknowledged, on every link
        that connected but did not come up yet (:meth:`link_up` tells the others; for a link
        with no connection the message is dropped)."""
        return [
            Transmit(i, RoundDone(r))
            for i, lk in enumerate(self.links)
            if not lk.up
            for r in self.acked
        ]

    # ------------------------------------------------------------------ queries

    def submit(self, qid: int, query: Chunk) -> list[Action]:
        """Send query ``qid`` to the least busy live link (or park it until one is back)."""
        if self.error is not None:
            raise self.error
        return self._send_query(qid, query)

    def forget(self, qids: list[int]) -> None:
        """Drop queries ``qids`` (their generator was left): not sent again after a
        fail-over, their answers, come or to come, dropped."""
        for qid in qids:
            for lk in self.links:
                lk.outstanding.pop(qid, None)
            self.answers.pop(qid, None)

    def _reconnect_all(self) -> list[Action]:
        return [
            self._reconnect(i)
            for i, lk in enumerate(self.links)
            if not lk.reconnecting and not lk.retired
        ]

    def _send_query(self, qid: int, query: Chunk) -> list[Action]:
        live = [i for i, lk in enumerate(self.links) if lk.up]
        if not live:
            self.links[0].outstanding[qid] = query  # parked: link_up sends it on
            return self._reconnect_all()
        link = min(live, key=lambda i: len(self.links[i].outstanding))
        self.links[link].outstanding[qid] = query
        return [Transmit(link, Query(qid), query)]
