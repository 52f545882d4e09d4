"""How one cursor's chunks reach its consumers: the actions of the teacher's machine, its
state records, and the fan-out (coalescing, sharding, credits, round ends, trimming).

Pure functions over plain records, no I/O: :mod:`.teacher_machine` calls them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from .._chunks import chunk_nbytes, select_samples
from .._knowledge import Chunk
from .._wire import MsgType
from .messages import EndRound, Hello, header

__all__ = [
    "Action",
    "Close",
    "Consumer",
    "Cursor",
    "Group",
    "ProtocolViolation",
    "Send",
    "SendData",
    "StartCursor",
    "StopCursor",
    "consumer_status",
    "credit",
    "cursor_status",
    "pump",
    "slowest",
    "window_room",
]


class ProtocolViolation(Exception):
    """A consumer broke the protocol; the driver closes its connection with this reason."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send a control message (no frames) to consumer ``cid``."""

    cid: int
    type: MsgType
    header: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SendData:
    """Send ``chunks`` (already cut to each target's shard) as one DATA message to every
    ``(cid, sub)`` of ``targets``: the driver encodes them once."""

    targets: tuple[tuple[int, int], ...]
    round: int
    upto: int
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class Close:
    """Close consumer ``cid``'s connection (after the sends before it)."""

    cid: int
    reason: str


@dataclass(frozen=True, slots=True)
class StartCursor:
    """Run the round factory: round ``round`` from sample ``start``, as cursor ``id``."""

    id: int
    round: int
    start: int


@dataclass(frozen=True, slots=True)
class StopCursor:
    """Stop cursor ``id``'s producer (nobody needs its chunks)."""

    id: int


Action = Send | SendData | Close | StartCursor | StopCursor


@dataclass(eq=False)
class Cursor:
    id: int
    round: int
    start: int
    chunks: collections.deque[Chunk] = field(default_factory=collections.deque)
    sizes: collections.deque[int] = field(default_factory=collections.deque)
    base: int = 0  # sequence number of chunks[0]
    produced: int = 0  # one past the highest sample id produced (the round's frontier)
    consumers: set[int] = field(default_factory=set)
    done: bool = False
    idle_since: float | None = None
    joined: bool = False  # a consumer attached once (a round computed ahead keeps its chunks)

    @property
    def end(self) -> int:
        """Sequence number one past the last chunk held."""
        return self.base + len(self.chunks)

    @property
    def held_from(self) -> int:
        """The first sample id this cursor can still hand to a new consumer."""
        return int(self.chunks[0].ids[0]) if self.chunks else max(self.start, self.produced)


@dataclass(eq=False)
class Consumer:
    cid: int
    hello: Hello
    peer: str
    sub: int = -1
    round: int = -1
    start: int = 0
    cursor: Cursor | None = None
    pos: int = 0  # sequence number of the next chunk of its cursor to send
    credits: int = 0
    window: int = 0  # bytes in flight at most (0: credits alone bound them)
    in_flight: collections.deque[int] = field(default_factory=collections.deque)  # sizes
    in_flight_bytes: int = 0
    ended: int = -1  # highest round whose END_ROUND it received
    waiting: bool = False  # behind a gate
    finished: int = 0  # samples of its round, once its cursor sent the whole round

    @property
    def key(self) -> tuple[str, int]:
        return (self.hello.group, self.hello.rank)


@dataclass
class Group:
    world_size: int
    done: dict[int, int] = field(default_factory=dict)  # rank -> highest ROUND_DONE
    passes: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # rank -> acks seen
    left: set[int] = field(default_factory=set)  # ranks that said BYE
    read: bool = False  # whether a rank ever asked for a round (a group that never did and
    # left does not end the service: it read nothing, e.g. a probe or a hostile client)


def slowest(cursor: Cursor, consumers: dict[int, Consumer]) -> int:
    """The sequence number of the first chunk a consumer of ``cursor`` still needs."""
    positions = [consumers[c].pos for c in cursor.consumers]
    return min(positions) if positions else cursor.base


def pump(cursor: Cursor, consumers: dict[int, Consumer], coalesce_bytes: int) -> list[Action]:
    """Send what each consumer of ``cursor`` may have now; end their rounds; trim."""
    actions: list[Action] = []
    while True:  # a message per span and credit, until credits or held chunks run out
        spans: dict[tuple[Any, ...], list[Consumer]] = collections.defaultdict(list)
        for cid in sorted(cursor.consumers):
            c = consumers[cid]
            room = window_room(c)
            if c.credits > 0 and c.pos < cursor.end and room > 0:
                spans[_span_key(cursor, c, min(coalesce_bytes, room))].append(c)
        if not spans:
            break
        for (_, stop, _, _, _), members in spans.items():
            actions += _send_span(cursor, members, stop)
    if cursor.done:
        for cid in sorted(cursor.consumers):
            c = consumers[cid]
            if c.pos >= cursor.end:
                total = max(cursor.start, cursor.produced)
                actions.append(Send(cid, *header(EndRound(c.sub, c.round, total))))
                c.ended = max(c.ended, c.round)
                c.cursor, c.finished = None, total
                cursor.consumers.discard(cid)
    _trim(cursor, consumers)
    return actions


def window_room(c: Consumer) -> int:
    """Bytes ``c`` may be sent now (a message of one chunk always fits while nothing is in
    flight); unbounded when it asked for no byte window."""
    if not c.window:
        return 1 << 62
    return c.window - c.in_flight_bytes


def credit(c: Consumer, n: int) -> None:
    """``n`` more messages for ``c``; the oldest ``n`` it was sent are no longer in flight."""
    c.credits = min(c.credits + n, 1 << 20)
    for _ in range(min(n, len(c.in_flight))):
        c.in_flight_bytes -= c.in_flight.popleft()


def _span_key(cursor: Cursor, c: Consumer, coalesce_bytes: int) -> tuple[Any, ...]:
    """Consumers with the same key receive the same DATA (encoded once): up to
    ``coalesce_bytes`` from the consumer's position (one chunk at least)."""
    stop, size = c.pos, 0
    while stop < cursor.end and (stop == c.pos or size < coalesce_bytes):
        size += cursor.sizes[stop - cursor.base]
        stop += 1
    first = cursor.chunks[c.pos - cursor.base].ids
    start = c.start if len(first) and c.start > int(first[0]) else 0
    w = c.hello.world_size
    return (c.pos, stop, w, c.hello.rank if w > 1 else 0, start)


def _send_span(cursor: Cursor, members: list[Consumer], stop: int) -> list[Action]:
    lead = members[0]
    w = lead.hello.world_size
    picked = []
    for i in range(lead.pos, stop):
        part = select_samples(cursor.chunks[i - cursor.base], lead.start, lead.hello.rank, w)
        if len(part.ids):
            picked.append(part)
    for c in members:
        c.pos = stop
    if not picked:
        return []
    nbytes = sum(chunk_nbytes(p) for p in picked) if any(c.window for c in members) else 0
    for c in members:
        c.credits -= 1
        if c.window:
            c.in_flight.append(nbytes)
            c.in_flight_bytes += nbytes
    targets = tuple((c.cid, c.sub) for c in members)
    return [SendData(targets, cursor.round, cursor.produced, tuple(picked))]


def _trim(cursor: Cursor, consumers: dict[int, Consumer]) -> None:
    """Drop the chunks every consumer has; a cursor without consumers keeps what it holds
    (parked, or computing ahead: even a whole round, until its first consumers come) unless
    its round is over and was served."""
    if not cursor.consumers and (not cursor.done or not cursor.joined):
        return
    keep_from = slowest(cursor, consumers)
    while cursor.base < keep_from and cursor.chunks:
        cursor.chunks.popleft()
        cursor.sizes.popleft()
        cursor.base += 1
    if not cursor.consumers:
        cursor.chunks.clear()
        cursor.sizes.clear()


def consumer_status(c: Consumer, done_round: int) -> dict[str, Any]:
    """One consumer as ``pantheon status`` shows it (``position``: its next sample)."""
    cursor = c.cursor
    frontier = cursor.produced if cursor is not None else c.finished
    position = frontier
    if cursor is not None and c.pos < cursor.end:
        position = int(cursor.chunks[c.pos - cursor.base].ids[0])
    return {
        "group": c.hello.group,
        "rank": c.hello.rank,
        "world_size": c.hello.world_size,
        "peer": c.peer,
        "round": c.round,
        "position": position,
        "lag": frontier - position,
        "credits": c.credits,
        "window": c.window,
        "in_flight_bytes": c.in_flight_bytes,
        "waiting": c.waiting,
        "done_round": done_round,
    }


def cursor_status(cursor: Cursor) -> dict[str, Any]:
    """One cursor as ``pantheon status`` shows it."""
    return {
        "round": cursor.round,
        "start": cursor.start,
        "produced": cursor.produced,
        "held": len(cursor.chunks),
        "consumers": len(cursor.consumers),
    }
