"""The teacher's side of the online protocol as a sans-IO state machine (the h11 model).

:class:`TeacherMachine` holds every consumer (a student process: a rank of a group), every
*cursor* (one run of the round factory: one round's chunks from one start) and the rules that
tie them. It does no I/O and starts no thread: the driver (:mod:`.server`) feeds it events
and carries out the actions it returns (:mod:`.fanout` defines them).

The rules:

* **Sharing.** Consumers that ask for the same round from positions a cursor still holds
  join that cursor: the program runs once per reader batch, whatever the number of ranks and
  groups. A consumer asking for a position every cursor has passed (a late joiner, a
  restarted rank) gets a cursor of its own.
* **Gate.** A round's first cursor (from sample 0) starts once ``groups`` complete groups
  (every rank) asked for it, so their cursors coincide; a round-0 gate shut past
  ``gate_timeout`` fails the service, a later round's cursor starts with whoever came.
* **Shards.** Rank ``r`` of a group of ``world_size`` ``W`` receives the samples whose
  position ``i`` in the round has ``i % W == r``; a chunk holding none of them costs nothing.
* **Pace.** Each consumer grants credits (DATA messages in flight) and may bound their bytes
  (a window, passed by one chunk at most: messages are cut to fit). A cursor keeps the chunks
  not yet sent to all its consumers and produces ahead at most ``window`` chunks beyond the
  slowest of them: memory is bounded and the slowest consumer of a cursor sets its pace.
* **Replacement.** A ``(group, rank)`` that connects again replaces the old connection.
* **The end.** The service is done once ``groups`` groups have acknowledged their last round
  (every rank) and no connected consumer is still in a round; if every consumer left with an
  orderly goodbye before that, the service fails with a message that says so.
"""

from __future__ import annotations

import collections
from typing import Any

from .._chunks import COALESCE_BYTES, chunk_nbytes
from .._knowledge import Chunk
from .._wire import MsgType
from .fanout import (
    Action,
    Close,
    Consumer,
    Cursor,
    Group,
    ProtocolViolation,
    Send,
    StartCursor,
    StopCursor,
    consumer_status,
    credit,
    cursor_status,
    pump,
    slowest,
)
from .messages import (
    NO_QUERIES,
    NO_ROUNDS,
    REPLACED,
    Bye,
    Credit,
    Desc,
    ErrorCode,
    Event,
    Fail,
    Hello,
    Query,
    RoundDone,
    StatusRequest,
    Subscribe,
    header,
)

__all__ = ["TeacherMachine"]


class TeacherMachine:
    """The online teacher's protocol state (see the module docstring).

    Args:
        times: rounds served (>= 1).
        groups: complete groups a round's first cursor waits for (>= 1).
        max_students: consumers connected at most; more are refused (default 64).
        window: chunks a cursor holds beyond its slowest consumer (>= 1).
        coalesce_bytes: chunks ready together go out as one DATA message up to this size.
        gate_timeout: seconds a round's gate waits for its groups (see the module docstring).
        park_timeout: seconds a cursor without consumers is kept for one to come back.
        queries: serve queries instead of rounds (no cursors; the end is every student's BYE).
    """

    def __init__(
        self,
        *,
        times: int = 1,
        groups: int = 1,
        max_students: int = 64,
        window: int = 10,
        coalesce_bytes: int = COALESCE_BYTES,
        gate_timeout: float = 300.0,
        park_timeout: float = 10.0,
        queries: bool = False,
    ) -> None:
        self.times = times
        self.groups = groups
        self.max_students = max_students
        self.window = max(1, window)
        self.coalesce_bytes = coalesce_bytes
        self.gate_timeout = gate_timeout
        self.park_timeout = park_timeout
        self.queries = queries
        self.desc: Desc | None = None
        self.failure: str | None = None
        self._consumers: dict[int, Consumer] = {}
        self._by_key: dict[tuple[str, int], int] = {}
        self._monitors: set[int] = set()
        self._replaced: set[str] = set()
        self._cursors: dict[int, Cursor] = {}
        self._next_cursor = 0
        self._groups: dict[str, Group] = {}
        self._gates: dict[int, float] = {}  # round -> when its gate started waiting
        self._opened: set[int] = set()  # rounds whose gate has opened
        self._starts: list[StartCursor] = []  # cursors created, to start with the next actions
        self._ever_connected = False
        self.predicted_chunks = 0  # chunks the round factory produced (all cursors)
        self.rounds_served: set[int] = set()  # rounds some student acknowledged

    # ------------------------------------------------------------------ connections

    def connect(self, cid: int, hello: Hello, peer: str) -> list[Action]:
        """A client authenticated; returns what to send it (DESC, the failure, or a refusal)."""
        if hello.role == "monitor":
            self._monitors.add(cid)
            return []
        if hello.client and hello.client in self._replaced:
            return self._refuse(cid, ErrorCode.REPLACED, REPLACED)
        group = self._groups.get(hello.group)
        if group is not None and group.world_size != hello.world_size:
            return self._refuse(
                cid,
                ErrorCode.BAD_REQUEST,
                f"group {hello.group!r} has world_size {group.world_size}; this student says "
                f"{hello.world_size}: every rank of a group must give the same world_size",
            )
        actions: list[Action] = []
        old_cid = self._by_key.get((hello.group, hello.rank))
        if old_cid is not None:
            old = self._consumers[old_cid]
            if old.hello.client and old.hello.client != hello.client:
                self._replaced.add(old.hello.client)
            actions += self._drop(old_cid)
            actions += [Send(old_cid, *header(Fail(REPLACED, ErrorCode.REPLACED)))]
            actions.append(Close(old_cid, "replaced by a newer student of the same rank"))
        elif len(self._consumers) >= self.max_students:
            return self._refuse(
                cid,
                ErrorCode.FULL,
                f"this teacher serves at most {self.max_students} students at once "
                "(Teacher(max_students=...)); try again later or start a replica",
            )
        self._groups.setdefault(hello.group, Group(hello.world_size)).left.discard(hello.rank)
        self._consumers[cid] = Consumer(cid, hello, peer)
        self._by_key[(hello.group, hello.rank)] = cid
        self._ever_connected = True
        if self.desc is not None:
            actions.append(Send(cid, *header(self.desc)))
        if self.failure is not None:
            actions.append(Send(cid, *header(Fail(self.failure, ErrorCode.FAILED))))
        return self._out(actions)

    def _out(self, actions: list[Action]) -> list[Action]:
        """``actions``, after the starts of the cursors they created."""
        if not self._starts:
            return actions
        starts: list[Action] = list(self._starts)
        self._starts.clear()
        return starts + actions

    def prefetch(self, rnd: int = 0) -> list[Action]:
        """Start computing round ``rnd`` from sample 0 before anyone asks (so the description
        is known early); the round's first consumers join this cursor."""
        if self._joinable(rnd, 0) is None:
            self._new_cursor(rnd, 0)
        return self._out([])

    def set_desc(self, desc: Desc) -> list[Action]:
        """The teacher now knows its description: send it to every student."""
        self.desc = desc
        return [Send(cid, *header(desc)) for cid in self._consumers]

    def _refuse(self, cid: int, code: str, message: str, close: bool = True) -> list[Action]:
        refusal: list[Action] = [Send(cid, *header(Fail(message, code)))]
        return [*refusal, Close(cid, message)] if close else refusal

    def disconnect(self, cid: int) -> list[Action]:
        """A connection is gone (closed, lost, or after a :class:`Close`)."""
        self._monitors.discard(cid)
        return self._out(self._drop(cid))

    def _drop(self, cid: int) -> list[Action]:
        consumer = self._consumers.pop(cid, None)
        if consumer is None:
            return []
        if self._by_key.get(consumer.key) == cid:
            del self._by_key[consumer.key]
        return self._detach(consumer)

    def _detach(self, consumer: Consumer) -> list[Action]:
        cursor, consumer.cursor = consumer.cursor, None
        consumer.waiting = False
        if cursor is None:
            return []
        cursor.consumers.discard(consumer.cid)
        return self._pump(cursor)

    # ------------------------------------------------------------------ messages

    def receive(self, cid: int, event: Event, now: float = 0.0) -> list[Action]:
        """A parsed message from ``cid``.

        Raises:
            ProtocolViolation: the message makes no sense from this consumer now (the driver
                closes the connection, logs the reason, and the teacher serves on).
        """
        return self._out(self._receive(cid, event, now))

    def _receive(self, cid: int, event: Event, now: float) -> list[Action]:
        if cid in self._monitors:
            if isinstance(event, StatusRequest):
                return [Send(cid, MsgType.STATUS_INFO, {"status": self.status()})]
            if isinstance(event, Bye):
                return [Close(cid, "the monitor said goodbye")]
            raise ProtocolViolation(f"a monitor connection sent {type(event).__name__}")
        consumer = self._consumers.get(cid)
        if consumer is None:
            return []  # a message racing its connection's replacement: nothing to do
        if isinstance(event, Credit):
            if event.sub == consumer.sub and consumer.cursor is not None:
                credit(consumer, event.n)
                return self._pump(consumer.cursor)
            return []  # credits of an abandoned subscription
        if isinstance(event, Subscribe):
            return self._subscribe(consumer, event, now)
        if isinstance(event, RoundDone):
            return self._round_done(consumer, event)
        if isinstance(event, Bye):
            group = self._groups.get(consumer.hello.group)
            if group is not None:
                group.left.add(consumer.hello.rank)
            return [*self._drop(cid), Close(cid, "the student said goodbye")]
        if isinstance(event, StatusRequest):
            return [Send(cid, MsgType.STATUS_INFO, {"status": self.status()})]
        if isinstance(event, Query):
            if self.queries:
                return []  # the driver's query batcher answers it
            return self._refuse(cid, ErrorCode.BAD_REQUEST, NO_QUERIES, close=False)
        raise ProtocolViolation(f"a student may not send {type(event).__name__} to a teacher")

    def _subscribe(self, consumer: Consumer, event: Subscribe, now: float) -> list[Action]:
        if self.queries:
            return self._refuse(consumer.cid, ErrorCode.BAD_REQUEST, NO_ROUNDS, close=False)
        if event.round >= self.times:
            message = (
                f"this teacher serves {self.times} round(s) (times={self.times}); round "
                f"{event.round} was requested"
            )
            return [Send(consumer.cid, *header(Fail(message, ErrorCode.ROUNDS)))]
        if self.failure is not None:
            return [Send(consumer.cid, *header(Fail(self.failure, ErrorCode.FAILED)))]
        actions = self._detach(consumer)
        self._groups[consumer.hello.group].read = True
        consumer.sub, consumer.round, consumer.start = event.sub, event.round, event.start
        consumer.credits, consumer.window = event.credits, event.window
        consumer.in_flight.clear()
        consumer.in_flight_bytes = 0
        if event.start < consumer.hello.world_size and event.round not in self._opened:
            # the start of its shard (sample ``rank``): the round's gate
            consumer.waiting = True
            self._gates.setdefault(event.round, now)
            return actions + self._open_gate(event.round)
        cursor = self._joinable(event.round, event.start)
        if cursor is None:
            cursor = self._new_cursor(event.round, event.start)
        return actions + self._attach(consumer, cursor)

    def _joinable(self, rnd: int, start: int) -> Cursor | None:
        best: Cursor | None = None
        for cursor in self._cursors.values():
            fits = cursor.round == rnd and cursor.start <= start and cursor.held_from <= start
            if fits and (best is None or cursor.held_from > best.held_from):
                best = cursor
        return best

    def _open_gate(self, rnd: int, force: bool = False) -> list[Action]:
        waiting = [c for c in self._consumers.values() if c.waiting and c.round == rnd]
        if not force and self._complete_groups(waiting) < self.groups:
            return []
        self._gates.pop(rnd, None)
        self._opened.add(rnd)
        if not waiting:
            return []
        cursor = self._joinable(rnd, 0) or self._new_cursor(rnd, 0)
        for consumer in waiting:
            consumer.waiting = False
            self._attach(consumer, cursor, pump=False)
        return self._pump(cursor)

    def _complete_groups(self, consumers: list[Consumer]) -> int:
        ranks: dict[str, set[int]] = collections.defaultdict(set)
        for c in consumers:
            ranks[c.hello.group].add(c.hello.rank)
        return sum(len(r) == self._groups[g].world_size for g, r in ranks.items())

    def _new_cursor(self, rnd: int, start: int) -> Cursor:
        cursor = Cursor(self._next_cursor, rnd, start, produced=start)
        self._next_cursor += 1
        self._cursors[cursor.id] = cursor
        self._starts.append(StartCursor(cursor.id, rnd, start))
        return cursor

    def _attach(self, consumer: Consumer, cursor: Cursor, pump: bool = True) -> list[Action]:
        consumer.cursor = cursor
        cursor.consumers.add(consumer.cid)
        cursor.joined = True
        cursor.idle_since = None
        consumer.pos = cursor.base
        while consumer.pos < cursor.end:  # skip the chunks wholly below its start
            last = cursor.chunks[consumer.pos - cursor.base].ids
            if len(last) and int(last[-1]) >= consumer.start:
                break
            consumer.pos += 1
        return self._pump(cursor) if pump else []

    def _round_done(self, consumer: Consumer, event: RoundDone) -> list[Action]:
        if event.round >= self.times:
            raise ProtocolViolation(
                f"ROUND_DONE for round {event.round}, but this teacher serves rounds "
                f"0..{self.times - 1}"
            )
        group = self._groups[consumer.hello.group]
        rank = consumer.hello.rank
        group.done[rank] = max(group.done.get(rank, -1), event.round)
        self.rounds_served.add(event.round)
        # distinct (process, round) acks: each new process reading a round again is a pass
        group.passes.setdefault(rank, set()).add((consumer.hello.client, event.round))
        return []

    # ------------------------------------------------------------------ cursors

    def add_chunks(self, cursor_id: int, chunks: list[Chunk]) -> list[Action]:
        """Chunks the round factory produced for a cursor (validated, in order)."""
        cursor = self._cursors.get(cursor_id)
        if cursor is None:
            return []
        for chunk in chunks:
            if len(chunk.ids):
                cursor.produced = max(cursor.produced, int(chunk.ids[-1]) + 1)
            cursor.chunks.append(chunk)
            cursor.sizes.append(chunk_nbytes(chunk))
        self.predicted_chunks += len(chunks)
        return self._out(self._pump(cursor))

    def end_cursor(self, cursor_id: int) -> list[Action]:
        """The cursor's round factory is exhausted: its round ends after the held chunks."""
        cursor = self._cursors.get(cursor_id)
        if cursor is None:
            return []
        cursor.done = True
        actions = self._pump(cursor)
        nxt = cursor.round + 1
        if nxt < self.times and self._joinable(nxt, 0) is None and not self.queries:
            self._new_cursor(nxt, 0)  # the next round computes ahead, within its window
        return self._out(actions)

    def fail(self, message: str) -> list[Action]:
        """The teacher cannot go on (its reader or program failed): tell every student."""
        self.failure = message
        actions: list[Action] = []
        for cid in list(self._consumers):
            actions.append(Send(cid, *header(Fail(message, ErrorCode.FAILED))))
        for cursor in list(self._cursors.values()):
            actions.append(StopCursor(cursor.id))
        self._cursors.clear()
        return actions

    def has_room(self, cursor_id: int) -> bool:
        """Whether the cursor's producer may hand over more chunks now (False: gone)."""
        cursor = self._cursors.get(cursor_id)
        if cursor is None:
            return False
        return len(cursor.chunks) - (self._slowest(cursor) - cursor.base) < self.window

    def is_live(self, cursor_id: int) -> bool:
        """Whether the cursor still exists (its producer stops otherwise)."""
        return cursor_id in self._cursors

    def _slowest(self, cursor: Cursor) -> int:
        return slowest(cursor, self._consumers)

    def _pump(self, cursor: Cursor) -> list[Action]:
        actions = pump(cursor, self._consumers, self.coalesce_bytes)
        if cursor.done and not cursor.chunks and not cursor.consumers:
            del self._cursors[cursor.id]
        return actions

    # ------------------------------------------------------------------ time and the end

    def tick(self, now: float) -> list[Action]:
        """Time passed: open or fail gates that waited too long, retire parked cursors."""
        actions: list[Action] = []
        for rnd, since in list(self._gates.items()):
            if now - since < self.gate_timeout:
                continue
            if rnd == 0:
                return self._out(self.fail(self._gate_message(rnd)))
            actions += self._open_gate(rnd, force=True)
        for cursor in list(self._cursors.values()):
            if cursor.consumers:
                cursor.idle_since = None
            elif cursor.idle_since is None:
                cursor.idle_since = now
            elif now - cursor.idle_since >= self.park_timeout and not self._is_ahead(cursor):
                del self._cursors[cursor.id]
                actions.append(StopCursor(cursor.id))
        return self._out(actions)

    def _is_ahead(self, cursor: Cursor) -> bool:
        """A cursor computing a round from its start ahead of its gate: kept while it may
        still be joined."""
        return cursor.start == 0 and cursor.round not in self._opened

    def _gate_message(self, rnd: int) -> str:
        waiting = [c for c in self._consumers.values() if c.waiting and c.round == rnd]
        have = sorted({f"{c.hello.group!r} rank {c.hello.rank}" for c in waiting})
        return (
            f"the teacher waited {self.gate_timeout:g} s for {self.groups} complete student "
            f"groups to ask for round {rnd}, but only these ranks came: {', '.join(have) or 'none'}"
            "; start every rank of every group, or lower start_knowledge_service(groups=...)"
        )

    @property
    def done_groups(self) -> list[str]:
        """Groups whose every rank acknowledged the last round, or ``times`` rounds in all
        (the seed's students: each process reads round 0, ``times`` processes in turn)."""
        last = self.times - 1
        return [
            name
            for name, g in self._groups.items()
            if len(g.done) == g.world_size
            and all(g.done[r] >= last or len(g.passes.get(r, ())) >= self.times for r in g.done)
        ]

    def finished(self) -> bool:
        """Whether the service is done (see the module docstring)."""
        if self.queries:  # every student came (groups of them) and said goodbye
            gone = not self._consumers and self._all_left()
            return self._ever_connected and gone and len(self._groups) >= self.groups
        done = set(self.done_groups)
        if len(done) < self.groups:
            return False
        return all(c.hello.group in done for c in self._consumers.values())

    def _all_left(self) -> bool:
        return all(len(g.left) == g.world_size for g in self._groups.values())

    def abandoned(self) -> str | None:
        """Why the service cannot finish any more, or None: every student left (with a
        goodbye) before ``groups`` groups finished their last round."""
        if self._consumers or self.queries or not self._groups or self.finished():
            return None
        done = set(self.done_groups)
        gone = [n for n, g in self._groups.items() if n not in done and g.left and g.read]
        if not gone or not all(
            len(self._groups[n].left) == self._groups[n].world_size for n in gone
        ):
            return None
        parts = []
        for name in gone:
            g = self._groups[name]
            last = max(g.done.values(), default=-1)
            parts.append(f"group {name!r} left after round {last} (of rounds 0..{self.times - 1})")
        return (
            f"every student said goodbye before the last round: {'; '.join(parts)}, and "
            f"{len(done)} of the {self.groups} group(s) this teacher waits for finished "
            f"(times={self.times}); the students stopped early"
        )

    def status(self) -> dict[str, Any]:
        """What ``pantheon status`` shows: rounds, cursors and every consumer (msgpack-able)."""
        students = [
            consumer_status(c, self._groups[c.hello.group].done.get(c.hello.rank, -1))
            for c in sorted(self._consumers.values(), key=lambda c: c.key)
        ]
        return {
            "times": self.times,
            "groups": self.groups,
            "mode": "queries" if self.queries else "rounds",
            "cursors": [cursor_status(k) for k in self._cursors.values()],
            "students": students,
            "done_groups": self.done_groups,
            "predicted_chunks": self.predicted_chunks,
            "rounds_served": len(self.rounds_served),
            "failure": self.failure,
        }
