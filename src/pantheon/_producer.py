"""A background producer: runs a round factory ahead of the sender, bounded.

The teacher's prediction (or the user's reader) runs in this thread while the serving thread
encodes and sends earlier chunks, so the model never waits for the network and the network
never waits for the model, up to ``maxsize`` chunks in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ._knowledge import Chunk

__all__ = ["Producer"]

_TIMEOUT = object()


class Producer:
    """Run ``make_round(start_sample)`` in a thread, handing chunks through a bounded queue.

    Args:
        make_round: the round factory.
        start_sample: first sample of the round to produce.
        maxsize: chunks produced ahead at most (the service's ``buf_size``).
    """

    def __init__(
        self, make_round: Callable[[int], Iterator[Chunk]], start_sample: int, maxsize: int
    ) -> None:
        self.start_sample = start_sample
        self._make_round = make_round
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self._head: tuple[str, Any] | None = None
        self.touched = False  # whether take() handed anything out
        self._thread = threading.Thread(target=self._run, name="pantheon-producer", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        it = self._make_round(self.start_sample)
        try:
            for chunk in it:
                if not self._put(("chunk", chunk)):
                    return
            self._put(("end", None))
        except BaseException as exc:
            self._put(("error", exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _get(self, timeout: float) -> tuple[str, Any] | None:
        if self._head is not None:
            item, self._head = self._head, None
            return item
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def peek(self, timeout: float) -> Chunk | None:
        """The first chunk without taking it; ``None`` if none came within ``timeout`` s or the
        round is empty. Re-raises the producer's error."""
        if self._head is None:
            self._head = self._get(timeout)
        if self._head is None:
            return None
        kind, item = self._head
        if kind == "error":
            raise item
        return item if kind == "chunk" else None

    def take(self, max_bytes: int, timeout: float) -> list[Chunk] | object | None:
        """Chunks ready now (at least one, then more while under ``max_bytes``).

        Returns a list of chunks, ``None`` at the end of the round, or ``Producer.TIMEOUT``
        when nothing came within ``timeout`` s. Re-raises the producer's error.
        """
        item = self._get(timeout)
        if item is None:
            return _TIMEOUT
        chunks: list[Chunk] = []
        size = 0
        while True:
            kind, value = item
            if kind == "error":
                raise value
            if kind == "end":
                if chunks:
                    self._head = item
                    break
                return None
            chunks.append(value)
            size += sum(getattr(v, "nbytes", 0) for v in value.data.values())
            if size >= max_bytes:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        self.touched = True
        return chunks

    TIMEOUT = _TIMEOUT

    def stop(self) -> None:
        """Stop producing (the thread ends at its next hand-off)."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
