"""The teacher's round factory at work: one thread per cursor, feeding the machine, and
every chunk checked before anything is sent.

Every chunk is checked against the description (keys, dtypes, trailing shapes, as
``Teacher.dump`` does offline) and its ids against the round's positions, so a reader whose
batches change shape mid-stream, or a round factory whose ids skip, is reported to the
students as the teacher's error instead of reaching a training loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._errors import KnowledgeError, error_text
from .._knowledge import Chunk, Description, check_batch
from .._util import Deadline, wait_until
from .fanout import Action, StartCursor, StopCursor
from .teacher_machine import TeacherMachine

__all__ = ["CursorRunner", "RoundFactory", "check_chunk"]

log = logging.getLogger("pantheon")

RoundFactory = Callable[[int, int], Iterator[Chunk]]
"""``make_round(round_index, start_sample)``: a round's chunks from ``start_sample`` on."""


def check_chunk(chunk: Chunk, desc: Description, expected: int, rnd: int, start: int) -> int:
    """Check one produced chunk; return the id expected next.

    Args:
        chunk: what the round factory yielded.
        desc: the teacher's description (from its first chunk).
        expected: the id the chunk must start with (at the cursor's first chunk: ``start``,
            or more when the round has fewer samples before it).
        rnd / start: the round and the cursor's first sample, for messages.

    Raises:
        KnowledgeError: keys, dtypes or shapes that differ from the description, or ids that
            are not the consecutive positions expected.
    """
    check_batch(chunk.data, desc, where=f"round {rnd}, the batch at sample {expected}")
    ids = chunk.ids
    n = len(ids)
    if not n:
        return expected
    first = int(ids[0])
    if first < expected or (first != expected and expected != start):
        raise KnowledgeError(
            f"round {rnd}: the teacher's round produced sample id {first} where {expected} "
            "was expected; ids must be the samples' positions in the round"
        )
    if int(ids[-1]) - first != n - 1 or not np.array_equal(ids, np.arange(first, first + n)):
        raise KnowledgeError(
            f"round {rnd}: a batch's sample ids are not consecutive ({ids[: min(n, 8)].tolist()}"
            "...); ids must be the samples' positions in the round"
        )
    return first + n


class CursorRunner:
    """Runs the round factory of each of a machine's cursors in a thread of its own.

    A producer hands each chunk to the machine (under ``cond``), has its actions carried out,
    and waits while its cursor holds a full window. A producer that fails fails the machine
    (every student is told why) and keeps the error in :attr:`failure` for the serving loop.

    Args:
        machine: the serve call's machine.
        make_round: the round factory.
        cond: the lock (condition) that guards ``machine``.
        desc_of: the teacher's description, learned from the first chunk ever produced.
        run: carries out actions (called with the lock held: their order is the machine's).
        drain: called after each locked section, without the lock: sends what ``run`` left
            for this thread to send itself (default: nothing to do).
    """

    def __init__(
        self,
        machine: TeacherMachine,
        make_round: RoundFactory,
        cond: threading.Condition,
        desc_of: Callable[[Chunk], Description],
        run: Callable[[list[Action]], None],
        drain: Callable[[], None] = lambda: None,
    ) -> None:
        self._machine = machine
        self._make_round = make_round
        self._cond = cond
        self._desc_of = desc_of
        self._run = run
        self._drain = drain
        self._stops: dict[int, threading.Event] = {}
        self.failure: BaseException | None = None
        self.wait_seconds = 0.0  # time producers waited for students to take knowledge

    def apply(self, action: StartCursor | StopCursor) -> None:
        """Start or stop a cursor's producer."""
        if isinstance(action, StopCursor):
            stop = self._stops.pop(action.id, None)
            if stop is not None:
                stop.set()
            return
        stop = threading.Event()
        self._stops[action.id] = stop
        threading.Thread(
            target=self._produce,
            args=(action, stop),
            name=f"pantheon-round-{action.round}-from-{action.start}",
            daemon=True,
        ).start()

    def stop_all(self) -> None:
        """Stop every producer (they end at their next chunk); any thread may call it."""
        with self._cond:  # apply() adds to the stops under it
            stops, self._stops = self._stops, {}
            for stop in stops.values():
                stop.set()
            self._cond.notify_all()

    def _go_on(self, cid: int, stop: threading.Event) -> bool:
        """Wait while the cursor's window is full (holds the lock); False: stop producing."""
        machine = self._machine
        if not machine.has_room(cid):
            t0 = time.perf_counter()
            wait_until(
                self._cond,
                lambda: stop.is_set() or not machine.is_live(cid) or machine.has_room(cid),
                Deadline(None),
            )
            self.wait_seconds += time.perf_counter() - t0
        return not stop.is_set() and machine.is_live(cid)

    def _produce(self, action: StartCursor, stop: threading.Event) -> None:
        cid, machine = action.id, self._machine
        expected = action.start
        it: Any = None
        try:
            it = self._make_round(action.round, action.start)  # the user's code: it may raise
            ready = getattr(it, "ready", None)  # chunks the round holds read ahead (a few)
            for chunk in it:
                group = [chunk]
                while callable(ready) and ready() > 0:  # ready together: one message
                    group.append(next(it))
                for c in group:
                    expected = check_chunk(
                        c, self._desc_of(c), expected, action.round, action.start
                    )
                with self._cond:
                    if stop.is_set():
                        return
                    self._run(machine.add_chunks(cid, group))
                    room, live = machine.has_room(cid), machine.is_live(cid)
                self._drain()
                if stop.is_set() or not live:
                    return
                if not room:
                    with self._cond:
                        if not self._go_on(cid, stop):
                            return
            with self._cond:
                if not stop.is_set():
                    self._run(machine.end_cursor(cid))
        except BaseException as exc:
            self._fail(exc, action)
        finally:
            self._drain()
            close = getattr(it, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # the round's own cleanup: what it produced stands
                    log.exception("closing round %d's reader failed", action.round)

    def _fail(self, exc: BaseException, action: StartCursor) -> None:
        what = error_text(exc)
        message = f"the teacher failed while producing round {action.round}: {what}"
        with self._cond:
            if self.failure is None:
                self.failure = exc
            self._run(self._machine.fail(message))
            self._cond.notify_all()
