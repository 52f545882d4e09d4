"""The student's read-ahead: one background thread per round that re-batches and merges.

It pulls chunks from every teacher's round stream, re-batches each teacher independently to
the student's batch size, checks that all teachers hold the same sample ids, merges them and
puts the finished batches on a bounded hand-off (``maxsize`` batches) that the generator drains.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .._errors import AlignmentError, ClosedError, PantheonTimeoutError
from .._knowledge import Chunk, normalize_batch
from .._util import Deadline, wait_until
from .merge import MergePlan, merge_batches
from .rebatch import Rebatcher
from .sources import RoundStream

__all__ = ["Assembler", "AssemblerStopped", "QueryAssembler", "RoundAssembler"]

_Item = tuple[str, Any]
_END: _Item = ("end", None)
_POLL = 0.1  # seconds between checks of the stop flag while the producer waits for room


class _Handoff:
    """A bounded hand-off of finished batches from one producer thread to one consumer.

    Leaner than :class:`queue.Queue` for this one-to-one case: items move through a deque
    (whose appends and pops are atomic) and the lock is taken only when a side has to wait or
    to wake the other. A full hand-off lets its producer sleep until the consumer has taken it
    down to a quarter (``maxsize // 4``), so the two threads wake each other about once per
    ``3 * maxsize / 4`` batches instead of once per batch: each wake-up costs the training loop
    a thread switch (on a loaded machine, up to milliseconds), and the producer refills the
    hand-off in a fraction of the time the loop takes to use the quarter that is left.

    A side about to wait publishes its flag *before* it re-checks the deque under the lock,
    and the other side reads the flag *after* changing the deque, so no wake-up is lost.

    Args:
        maxsize: items held at most (>= 1).
    """

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._maxsize = max(1, maxsize)
        self._low = self._maxsize // 4
        self._cond = threading.Condition(threading.Lock())
        self._consumer_waiting = False
        self._producer_waiting = False

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items)

    def put(self, item: _Item, stop: threading.Event) -> bool:
        """Append ``item``, waiting for room; False (not appended) once ``stop`` is set."""
        items = self._items
        if stop.is_set():
            return False
        if len(items) >= self._maxsize:
            with self._cond:
                self._producer_waiting = True
                try:
                    while len(items) >= self._maxsize:
                        if stop.is_set():
                            return False
                        self._cond.wait(_POLL)
                finally:
                    self._producer_waiting = False
        items.append(item)
        if self._consumer_waiting:
            with self._cond:
                self._cond.notify_all()
        return True

    def put_many(self, items: list[_Item], stop: threading.Event) -> bool:
        """Append ``items`` together, waiting for room for the first, and wake the consumer
        once for all of them (so a chunk cut into many small batches costs one wake-up, not
        one per batch); the hand-off may then hold up to ``maxsize + len(items) - 1`` items.
        False (nothing appended) once ``stop`` is set."""
        if len(items) == 1:
            return self.put(items[0], stop)
        if not items:
            return not stop.is_set()
        if not self.put(items[0], stop):
            return False
        self._items.extend(items[1:])
        if self._consumer_waiting:
            with self._cond:
                self._cond.notify_all()
        return True

    def put_back(self, item: _Item) -> None:
        """Return a final item (end or error) to the front, so that later gets see it again."""
        self._items.appendleft(item)

    def get(self, timeout: float, stop: threading.Event) -> _Item | None:
        """The next item, or None if none came within ``timeout`` seconds or ``stop`` is set."""
        items = self._items

        def ready() -> bool:
            return bool(items) or stop.is_set()

        try:
            item = items.popleft()
        except IndexError:
            with self._cond:
                self._consumer_waiting = True
                try:
                    if not wait_until(self._cond, ready, Deadline(timeout)) or not items:
                        return None
                finally:
                    self._consumer_waiting = False
                item = items.popleft()
        if self._producer_waiting and len(items) <= self._low:
            with self._cond:
                self._cond.notify_all()
        return item

    def wake(self) -> None:
        """Wake a waiting producer (after its stop flag was set)."""
        with self._cond:
            self._cond.notify_all()


class AssemblerStopped(ClosedError):
    """:meth:`Assembler.get` on an assembler that was stopped (replaced or closed) while it
    waited; the caller says which."""


class Assembler:
    """A background thread producing finished batches onto a bounded hand-off."""

    _names: list[str]

    def __init__(self, maxsize: int) -> None:
        self._queue = _Handoff(maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pantheon-assembler", daemon=True)

    def _assemble(self) -> None:
        raise NotImplementedError

    def _close_inputs(self) -> None:
        """Release the inputs after the thread stopped."""

    def qsize(self) -> int:
        """Finished batches waiting to be taken."""
        return self._queue.qsize()

    def get(self, timeout: float) -> Chunk | None:
        """The next merged batch, or ``None`` at the end of the round; re-raises the thread's errors.

        The sources enforce ``timeout`` themselves and name the teacher; this wait is a safety
        net at twice that.
        """
        got = self._queue.get(2 * timeout + 1, self._stop)
        if got is None and self._stop.is_set():
            raise AssemblerStopped("this knowledge generator's read-ahead was stopped")
        if got is None:
            raise PantheonTimeoutError(
                f"no knowledge batch arrived within {timeout:g} s from "
                f"{', '.join(self._names)}; raise Student(timeout=...) for slow teachers"
            )
        kind, item = got
        if kind == "batch":
            return item  # type: ignore[no-any-return]
        self._queue.put_back(got)  # the end or the error again on later calls
        if kind == "error":
            raise item
        return None

    def stop(self) -> None:
        """Stop the thread and abandon the round streams (idempotent); a consumer waiting in
        :meth:`get` is woken and raises :class:`AssemblerStopped`."""
        self._stop.set()
        self._queue.wake()
        while self._thread.is_alive():
            self._queue.wake()  # a producer waiting for room sees the stop flag
            self._thread.join(timeout=0.05)
        self._close_inputs()

    # -- the thread -------------------------------------------------------------------------

    def _put(self, item: _Item) -> bool:
        return self._queue.put(item, self._stop)

    def _run(self) -> None:
        try:
            self._assemble()
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put(("error", exc))
        else:
            self._put(_END)


class RoundAssembler(Assembler):
    """Assemble the student's batches of one round in a background thread.

    Args:
        streams: one round stream per teacher, in registration order.
        names: the teachers' names, for messages.
        plan: the merge plan.
        batch_size: samples per student batch.
        drop_last: drop a last batch shorter than ``batch_size``.
        maxsize: bound on finished batches waiting in the queue.
        timeout: seconds to wait for a teacher's next chunk before failing.
        shard: ``(rank, world_size, position)``: this rank of a data-parallel group, and the
            samples of its shard already handed out. With ``drop_last`` and several ranks,
            every rank yields the same number of batches, ``floor(floor(N / W) / B)`` for a
            round of ``N`` samples: a batch is handed out once the teachers have shown that
            every rank has samples for it (at most a batch is held back), the rest dropped.
    """

    def __init__(
        self,
        streams: Sequence[RoundStream],
        names: Sequence[str],
        plan: MergePlan,
        *,
        batch_size: int,
        drop_last: bool,
        maxsize: int,
        timeout: float,
        shard: tuple[int, int, int] = (0, 1, 0),
    ) -> None:
        self._streams = list(streams)
        self._world = shard[1]
        self._position = shard[2]
        self._equalize = drop_last and shard[1] > 1
        self._held: collections.deque[Chunk] = collections.deque()
        self._names = list(names)
        self._plan = plan
        self._batch_size = batch_size
        self._drop_last = drop_last
        self._timeout = timeout
        super().__init__(maxsize)
        self._thread.start()

    def _close_inputs(self) -> None:
        for stream in self._streams:
            stream.close()

    def _put_batch(self, batch: Chunk) -> bool:
        """Hand a batch on; with ranks to keep equal, once every rank surely has one too."""
        if not self._equalize:
            return self._put(("batch", batch))
        self._held.append(batch)
        return self._release()

    def _put_batches(self, batches: list[Chunk]) -> bool:
        """Hand on the batches cut from one chunk, together (see :meth:`_Handoff.put_many`)."""
        if not self._equalize:
            return self._queue.put_many([("batch", b) for b in batches], self._stop)
        self._held.extend(batches)
        return self._release()

    def _release(self) -> bool:
        limit = min(s.known_samples() for s in self._streams) // self._world
        ready: list[_Item] = []
        while self._held and self._position + len(self._held[0].ids) <= limit:
            batch = self._held.popleft()
            self._position += len(batch.ids)
            ready.append(("batch", batch))
        return self._queue.put_many(ready, self._stop)

    def _end_round(self) -> None:
        if self._equalize:
            self._release()  # the round's size is exact now; what is still held is dropped

    def _fill(self, i: int, rebatcher: Rebatcher, ended: list[bool]) -> None:
        stream = self._streams[i]
        while rebatcher.pending < self._batch_size and not ended[i] and not self._stop.is_set():
            chunk = stream.next_chunk(self._timeout, self._stop)
            if chunk is None:
                ended[i] = True
            else:
                rebatcher.push(chunk)

    def _assemble(self) -> None:
        if len(self._streams) == 1 and not self._plan.keys_need_merge:
            self._pass_through()
            return
        n = len(self._streams)
        rebatchers = [Rebatcher(self._batch_size) for _ in range(n)]
        ended = [False] * n
        done = 0  # samples assembled so far in this round
        while not self._stop.is_set():
            pieces: list[Chunk | None] = []
            for i, rb in enumerate(rebatchers):
                self._fill(i, rb, ended)
                pieces.append(rb.pop() or (rb.flush() if ended[i] else None))
            if self._stop.is_set():
                return
            if all(p is None for p in pieces):
                self._end_round()
                return
            self._check_aligned(pieces, done)
            first = pieces[0]
            assert first is not None
            size = len(first.ids)
            if size < self._batch_size and self._drop_last:
                self._end_round()
                return
            if n == 1 and not self._plan.keys_need_merge:
                batch = first
            else:
                data = merge_batches(
                    self._plan, [p.data for p in pieces if p is not None], self._names
                )
                batch = Chunk(first.ids, data)
            done += size
            if not self._put_batch(batch):
                return

    def _pass_through(self) -> None:
        """One teacher and nothing to merge: re-batch its chunks and hand them on.

        A stored chunk of exactly ``batch_size`` samples arriving on a batch boundary is handed
        on as it is (no slicing, no copy, no new dict).
        """
        stream, size, stop = self._streams[0], self._batch_size, self._stop
        rebatcher = Rebatcher(size)
        while not stop.is_set():
            chunk = stream.next_chunk(self._timeout, stop)
            if chunk is None:
                tail = rebatcher.flush()
                if tail is not None and not self._drop_last:
                    self._put(("batch", tail))
                self._end_round()
                return
            if not rebatcher.pending and len(chunk.ids) == size:
                if not self._put_batch(chunk):
                    return
                continue
            rebatcher.push(chunk)
            batches = []
            while (batch := rebatcher.pop()) is not None:
                batches.append(batch)
            if not self._put_batches(batches):
                return

    def _check_aligned(self, pieces: Sequence[Chunk | None], done: int) -> None:
        ref = pieces[0]
        for i, piece in enumerate(pieces):
            if piece is None or ref is None:
                short = i if piece is None else 0
                raise AlignmentError(
                    f"{self._names[short]} ended its round after {done} samples while other "
                    "teachers have more: teachers must read the same samples in the same order"
                )
            if i == 0:
                continue
            if len(piece.ids) != len(ref.ids):
                size = min(len(piece.ids), len(ref.ids))
                who = i if len(piece.ids) < len(ref.ids) else 0
                raise AlignmentError(
                    f"{self._names[who]} ended its round after {done + size} samples while other "
                    "teachers have more: teachers must read the same samples in the same order"
                )
            if not np.array_equal(piece.ids, ref.ids):
                bad = int(np.flatnonzero(piece.ids != ref.ids)[0])
                raise AlignmentError(
                    f"{self._names[i]} is not aligned with {self._names[0]}: at position {done + bad} "
                    f"of the round it has sample id {int(piece.ids[bad])} where {self._names[0]} has "
                    f"{int(ref.ids[bad])}. In same-order mode every teacher must read the same "
                    "samples in the same order"
                )


class QueryAssembler(Assembler):
    """Query mode: send the student's own batches to every teacher and yield them with the answers.

    The queries are re-batched to ``batch_size`` and pipelined: up to ``window`` queries are in
    flight at once; answers are merged and handed out in query order.

    Args:
        sources: the online teachers (``submit`` / ``answer`` / ``desc``).
        names: their names.
        plan_for: builds the merge plan once the teachers' descriptions are known.
        queries: an iterable of feed batches (dicts of arrays).
        batch_size: samples per query.
        drop_last: drop a last query shorter than ``batch_size``.
        window: queries in flight at most.
        maxsize: finished batches waiting at most.
        timeout: seconds to wait for an answer.
        qids: the query ids to use, shared by the student's query generators: an answer in
            flight for a generator left early must never answer a later one's query.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        names: Sequence[str],
        plan_for: Any,
        queries: Any,
        *,
        batch_size: int,
        drop_last: bool,
        window: int,
        maxsize: int,
        timeout: float,
        qids: Iterator[int],
    ) -> None:
        self._sources = list(sources)
        self._names = list(names)
        self._plan_for = plan_for
        self._queries = queries
        self._batch_size = batch_size
        self._drop_last = drop_last
        self._window = max(1, window)
        self._timeout = timeout
        self._qids = qids
        super().__init__(maxsize)
        self._thread.start()

    def _batches(self) -> Any:
        rb = Rebatcher(self._batch_size)
        position = 0
        for i, batch in enumerate(self._queries):
            data, n = normalize_batch(batch, where=f"query batch {i}")
            rb.push(Chunk(np.arange(position, position + n, dtype=np.int64), data))
            position += n
            while (out := rb.pop()) is not None:
                yield out
        tail = rb.flush()
        if tail is not None and not (self._drop_last and len(tail.ids) < self._batch_size):
            yield tail

    def _assemble(self) -> None:
        pending: collections.deque[tuple[int, Chunk]] = collections.deque()
        try:
            self._answer_in_order(pending)
        finally:  # left early: the answers still to come are for nobody
            if pending:
                for source in self._sources:
                    source.forget([q for q, _ in pending])

    def _answer_in_order(self, pending: collections.deque[tuple[int, Chunk]]) -> None:
        """Keep up to ``window`` queries in flight; hand out their answers in query order
        (``pending``: the queries sent and not yet handed out)."""
        batches = iter(self._batches())
        exhausted = False
        while not self._stop.is_set():
            while not exhausted and len(pending) < self._window:
                query = next(batches, None)
                if query is None:
                    exhausted = True
                    break
                qid = next(self._qids)
                pending.append((qid, query))
                for source in self._sources:
                    source.submit(qid, query)
            if not pending:
                return
            q, query = pending[0]
            answers = [s.answer(q, self._timeout, self._stop) for s in self._sources]
            pending.popleft()
            plan = self._plan_for()
            self._check(query, answers)
            merged = merge_batches(plan, [a.data for a in answers], self._names)
            data = dict(query.data)
            data.update(merged)
            if not self._put(("batch", Chunk(query.ids, data))):
                return

    def _check(self, query: Chunk, answers: Sequence[Chunk]) -> None:
        for name, answer in zip(self._names, answers, strict=True):
            if not np.array_equal(answer.ids, query.ids):
                raise AlignmentError(f"{name} answered a query with other sample ids than asked")
