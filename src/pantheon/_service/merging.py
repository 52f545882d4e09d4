"""Merging a round's small chunks while the reader keeps up, holding back nothing not ready.

A knowledge message per small batch costs more than the batch (see ``docs/design.md``, "The
service's per-batch cost"), so consecutive chunks of a fast reader are concatenated into one
chunk of up to ``merge_bytes`` bytes (one copy, ids and order kept). Merging starts only after
``FAST_READS`` reads in a row each took less than ``merge_wait`` seconds, so a reader's first
batches, and the batch after a slow read, are handed on alone: a fast batch 0 never waits for a
slow batch 1. A merge ends once ``merge_wait`` seconds have passed since it began, as soon as
one read took longer than that, or at a chunk whose fields differ in dtype or trailing shape
(never merged, so that the teacher's check reports it as it would unmerged). A reader that was
fast many times and then stalls holds back at most one merge for that one stalled read. A
reader's error is raised after the samples read before it were handed on.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import numpy as np

from .._chunks import COALESCE_BYTES, JOIN_MIN_BYTES, concat_chunks
from .._knowledge import Chunk, Ragged, Value

__all__ = [
    "FAST_READS",
    "JOIN_MIN_BYTES",
    "MERGE_BYTES",
    "MERGE_WAIT_S",
    "ReadyChunks",
    "merge_ready",
]

MERGE_BYTES = 256 * 1024
"""Bytes of small chunks merged into one at most (default 256 KiB)."""
MERGE_WAIT_S = 0.005
"""Seconds a merge may wait for the reader's next batch (default 5 ms)."""
FAST_READS = 8
"""Reads in a row faster than ``MERGE_WAIT_S`` before merging starts."""

_Signature = tuple[tuple[str, Any, tuple[int, ...], bool], ...]


def _signature(data: Mapping[str, Value]) -> tuple[_Signature | None, int]:
    """What must match for two chunks to be merged (name, dtype, trailing shape, raggedness
    of each field; None: a field that is never merged) and the chunk's bytes."""
    sig = []
    size = 0
    for k, v in data.items():
        if type(v) is np.ndarray:
            sig.append((k, v.dtype, v.shape[1:], False))
            size += v.nbytes
        elif isinstance(v, Ragged):
            sig.append((k, v.values.dtype, v.values.shape[1:], True))
            size += v.values.nbytes
        else:
            return None, 0
    return tuple(sig), size


def merge_ready(
    chunks: Iterator[Chunk],
    merge_bytes: int = MERGE_BYTES,
    merge_wait: float = MERGE_WAIT_S,
    join_bytes: int = COALESCE_BYTES,
) -> ReadyChunks:
    """``chunks`` (consecutive positions of one round), merged while the reader keeps up;
    closing the result closes ``chunks``."""
    return ReadyChunks(chunks, merge_bytes, merge_wait, join_bytes)


class ReadyChunks(Iterator[Chunk]):
    """The iterator :func:`merge_ready` returns: small chunks merged, large ones read ahead
    while the reader keeps up, and :meth:`ready` saying how many chunks it holds.

    Args:
        chunks: consecutive chunks of one round.
        merge_bytes: small chunks are concatenated up to this many bytes.
        merge_wait: seconds a merge or a read-ahead may wait for the reader's next batch.
        join_bytes: chunks of :data:`JOIN_MIN_BYTES` or more are read ahead (not copied) up to
            this many bytes, for the teacher to send as one message (frames gathered).
    """

    def __init__(
        self, chunks: Iterator[Chunk], merge_bytes: int, merge_wait: float, join_bytes: int
    ) -> None:
        self._chunks = chunks
        self._ahead: collections.deque[Chunk] = collections.deque()
        self._out = self._merged(merge_bytes, merge_wait, join_bytes)

    def __iter__(self) -> ReadyChunks:
        return self

    def __next__(self) -> Chunk:
        return next(self._out)

    def ready(self) -> int:
        """Chunks this iterator holds: the next ``ready()`` calls of ``next`` do not read."""
        return len(self._ahead)

    def close(self) -> None:
        """Stop, and close the chunks' iterator (idempotent)."""
        self._out.close()
        self._ahead.clear()
        close = getattr(self._chunks, "close", None)
        if callable(close):
            close()

    def _merged(self, merge_bytes: int, merge_wait: float, join_bytes: int) -> Generator[Chunk]:
        chunks = self._chunks
        fast = 0  # reads in a row that took less than merge_wait
        held: Chunk | None = None  # read, not mergeable into the last merge: the next one's start
        while True:
            if held is None:
                t0 = time.perf_counter()
                chunk = next(chunks, None)
                fast = fast + 1 if time.perf_counter() - t0 < merge_wait else 0
            else:
                chunk, held = held, None
            if chunk is None:
                return
            sig, size = _signature(chunk.data)
            join = size >= JOIN_MIN_BYTES  # large: read ahead and joined on the wire, no copy
            limit = join_bytes if join else merge_bytes
            parts, error = [chunk], None
            began = last = time.perf_counter()
            while sig is not None and size < limit and last - began < merge_wait:
                if fast < FAST_READS:
                    break
                try:
                    more = next(chunks, None)
                except Exception as exc:  # raised once the samples read before it are handed on
                    error = exc
                    break
                now = time.perf_counter()
                fast, last = (fast + 1 if now - last < merge_wait else 0), now
                if more is None:
                    break
                more_sig, more_size = _signature(more.data)
                if more_sig != sig:
                    held = more
                    break
                parts.append(more)
                size += more_size
            if join:
                self._ahead.extend(parts)
                while self._ahead:
                    yield self._ahead.popleft()
            else:
                yield concat_chunks(parts)
            if error is not None:
                raise error
