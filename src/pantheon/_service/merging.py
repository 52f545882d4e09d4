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

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .._chunks import concat_chunks
from .._knowledge import Chunk, Ragged, Value

__all__ = ["FAST_READS", "MERGE_BYTES", "MERGE_WAIT_S", "merge_ready"]

MERGE_BYTES = 256 * 1024
"""Bytes merged into one chunk at most (default 256 KiB, the wire's coalescing size)."""
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
    chunks: Iterator[Chunk], merge_bytes: int = MERGE_BYTES, merge_wait: float = MERGE_WAIT_S
) -> Iterator[Chunk]:
    """``chunks`` (consecutive positions of one round), merged while the reader keeps up;
    closing the result closes ``chunks``."""
    try:
        yield from _merged(chunks, merge_bytes, merge_wait)
    finally:
        close = getattr(chunks, "close", None)
        if callable(close):
            close()


def _merged(chunks: Iterator[Chunk], merge_bytes: int, merge_wait: float) -> Iterator[Chunk]:
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
        parts, error = [chunk], None
        began = last = time.perf_counter()
        while sig is not None and size < merge_bytes and last - began < merge_wait:
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
        yield concat_chunks(parts)
        if error is not None:
            raise error
