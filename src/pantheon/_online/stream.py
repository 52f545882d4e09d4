"""One round being streamed from an online teacher: what the student's reading sees of an
:class:`~.source.OnlineSource` (a ``RoundStream``)."""

from __future__ import annotations

import threading
from typing import Protocol

from .._errors import ClosedError, PantheonTimeoutError
from .._knowledge import Chunk
from .._util import Deadline, wait_until
from .student_machine import Action, RoundState, StudentMachine

__all__ = ["OnlineRound", "RoundOwner"]


class RoundOwner(Protocol):
    """What a round needs of its source (an :class:`~.source.OnlineSource`)."""

    name: str
    cond: threading.Condition
    machine: StudentMachine
    closed: bool

    def queue(self, actions: list[Action]) -> None: ...

    def flush(self) -> None: ...

    def delivered(self, chunk: Chunk | None) -> None: ...


class OnlineRound:
    """One round being streamed from an online teacher (a ``RoundStream``)."""

    def __init__(self, source: RoundOwner, state: RoundState) -> None:
        self._source = source
        self._state = state

    def next_chunk(self, timeout: float, stop: threading.Event | None = None) -> Chunk | None:
        """The next chunk of the shard, or ``None`` once the round ended; waits ``timeout`` s
        (longer while a reconnection is under way: it has its own deadline and names the
        teacher when it gives up). Once ``stop`` is set (the round's reader stopped: the
        training loop left it, or the student is closing), the wait ends within half a
        second with :class:`~pantheon.ClosedError`."""
        src, state = self._source, self._state
        machine = src.machine

        def ready() -> bool:
            if stop is not None and stop.is_set():
                raise ClosedError(
                    f"the reader of round {state.round} stopped while waiting for {src.name}"
                )
            if state.error is not None:
                raise state.error
            if state.chunks or state.ended:
                return True
            if machine.error is not None:
                raise machine.error
            if src.closed:
                raise ClosedError(f"{src.name} was closed while a round was read")
            return False

        deadline = Deadline(timeout)
        with src.cond:
            while not wait_until(src.cond, ready, deadline):
                if not machine.reconnecting():
                    raise PantheonTimeoutError(
                        f"{src.name} sent no knowledge for {timeout:g} s in round "
                        f"{state.round}; raise Student(timeout=...) for slow teachers"
                    )
                deadline = Deadline(0.5)
            if not state.chunks:
                return None
            chunk, actions = machine.take()
            src.queue(actions)
            src.delivered(chunk)
        src.flush()
        return chunk

    def known_samples(self) -> int:
        """How many samples the round has, as far as the teacher said so far (exact once it
        ended)."""
        state = self._state
        return state.samples if state.samples is not None else state.frontier

    def close(self) -> None:
        """Abandon the rest of the round."""
        with self._source.cond:
            self._source.machine.close_round(self._state)
