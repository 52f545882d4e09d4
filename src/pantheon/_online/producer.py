"""A background producer: runs a round factory ahead of the sender, bounded.

The teacher's prediction (or the user's reader) runs in this thread while the serving thread
encodes and sends earlier chunks, so the model never waits for the network and the network
never waits for the model. Chunks that come fast (small batches of a cheap reader) are handed
over in groups, up to ``max_bytes``: one thread hand-off and one message for many batches. A
chunk that took a while to produce (a real model) is handed over at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._knowledge import Chunk

__all__ = ["Producer"]

_TIMEOUT = object()
_SLOW = 0.0005  # seconds: a chunk that took longer than this to produce is handed over at once
_MAX_GROUP = 1024  # chunks handed over together at most


def _nbytes(chunk: Chunk) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in chunk.data.values())


class Producer:
    """Run ``make_round(start_sample)`` in a thread, handing chunks through a bounded queue.

    Args:
        make_round: the round factory.
        start_sample: first sample of the round to produce.
        maxsize: hand-offs (groups of chunks) queued ahead at most (the teacher's ``buf_size``).
        max_bytes: bytes of fast chunks grouped into one hand-off at most (default 256 KiB).
    """

    TIMEOUT = _TIMEOUT

    def __init__(
        self,
        make_round: Callable[[int], Iterator[Chunk]],
        start_sample: int,
        maxsize: int,
        max_bytes: int = 256 * 1024,
    ) -> None:
        self.start_sample = start_sample
        self._make_round = make_round
        self._max_bytes = max_bytes
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
        group: list[Chunk] = []
        size = 0
        try:
            before = time.perf_counter()
            for chunk in it:
                slow = time.perf_counter() - before > _SLOW
                group.append(chunk)
                size += _nbytes(chunk)
                if slow or size >= self._max_bytes or len(group) >= _MAX_GROUP:
                    if not self._put(("chunks", (group, size))):
                        return
                    group, size = [], 0
                before = time.perf_counter()
            if group and not self._put(("chunks", (group, size))):
                return
            self._put(("end", None))
        except BaseException as exc:
            if group:
                self._put(("chunks", (group, size)))
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
        return item[0][0] if kind == "chunks" else None

    def take(self, max_bytes: int, timeout: float) -> list[Chunk] | object | None:
        """Chunks ready now (at least one group, then more while under ``max_bytes``).

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
            if kind != "chunks":
                if chunks:  # hand out what came before the end / the error first
                    self._head = item
                    break
                if kind == "error":
                    raise value
                return None
            group, group_size = value
            chunks.extend(group)
            size += group_size
            if size >= max_bytes:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        self.touched = True
        return chunks

    def stop(self) -> None:
        """Stop producing (the thread ends at its next hand-off)."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
