"""A round of a one-worker service, run in the thread that consumes it: no thread, no hand-off.

Python threads hand a batch to each other slowly: a thread woken by another gets the
interpreter only when the running one lets it go, which a busy thread does every 5 ms
(``sys.getswitchinterval()``). A reader thread feeding a prediction thread feeding the
consumer thus costs up to milliseconds per batch, the whole budget of a small one (see
``docs/design.md``, "The service's per-batch cost"). With one worker, the consumer's thread
reads, predicts and hands the chunk on itself; several workers keep their threads
(:mod:`pantheon._service.workers`), where overlapping devices is worth it.

When the service has no program (every schema source is a feed), consecutive reader batches
are merged into one chunk of up to ``merge_bytes`` bytes
(feeds concatenated sample-wise, one copy) while the reader keeps up: merging starts only
after ``FAST_READS`` reads in a row each took less than ``merge_wait`` seconds (so a reader's
first batches, and the batch after a slow read, are handed on alone: a fast batch 0 never
waits for a slow batch 1), and a merge ends once ``merge_wait`` seconds have passed since it
began, or as soon as one read took longer than that. A reader that was fast many times and
then stalls holds back at most one merge (at most ``merge_bytes``, read within
``merge_wait``) for the length of that one stalled read. Merging keeps order and ids (a chunk is a run of
consecutive positions); batches whose fields differ in dtype or trailing shape are never
merged, so that the teacher's check reports them as it would unmerged.

"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._knowledge import Chunk, Ragged, Value, concat_values, slice_value
from .programs import Worker, predict_batch, worker_error
from .readers import RawBatch

__all__ = ["FAST_READS", "MERGE_BYTES", "MERGE_WAIT_S", "InlineRound"]

MERGE_BYTES = 256 * 1024
"""Bytes of feeds merged into one chunk at most (default 256 KiB, the wire's coalescing size)."""
MERGE_WAIT_S = 0.005
"""Seconds a merge may wait for the reader's next batch (default 5 ms)."""
FAST_READS = 8
"""Reads in a row faster than ``MERGE_WAIT_S`` before merging starts (a reader's first
batches, and those after a slow read, are handed on alone)."""


_Signature = tuple[tuple[str, Any, tuple[int, ...], bool], ...]


def _signature(feeds: Mapping[str, Value]) -> tuple[_Signature | None, int]:
    """What must match for two batches to be merged (name, dtype, trailing shape, raggedness
    of each field; None: a field that is never merged) and the batch's bytes."""
    sig = []
    size = 0
    for k, v in feeds.items():
        if type(v) is np.ndarray:
            sig.append((k, v.dtype, v.shape[1:], False))
            size += v.nbytes
        elif isinstance(v, Ragged):
            sig.append((k, v.values.dtype, v.values.shape[1:], True))
            size += v.values.nbytes
        else:
            return None, 0
    return tuple(sig), size


class InlineRound(Iterator[Chunk]):
    """The chunks of one round of a one-worker service, read and predicted in the caller's
    thread (the worker's ``init_thread`` runs once in each thread that consumes a round).

    Args:
        raw: the reader's batches (:func:`~pantheon._service.readers.iter_raw_batches`).
        worker: the service's worker (``run`` ``None``: knowledge is the feeds, merged).
        feed_list / schema: as the service's.
        start_sample: batches that end at or below it are read and dropped; one that
            straddles it is sliced.
        merge_bytes / merge_wait: see the module docstring (``0`` bytes: no merging;
            batches are merged only without a program, whose batch size is the reader's).
    """

    def __init__(
        self,
        raw: Iterator[RawBatch],
        worker: Worker,
        feed_list: Sequence[str],
        schema: Mapping[str, str],
        start_sample: int,
        *,
        merge_bytes: int = MERGE_BYTES,
        merge_wait: float = MERGE_WAIT_S,
    ) -> None:
        self._raw = raw
        self._worker = worker
        self._feed_list = list(feed_list)
        self._schema = dict(schema)
        self._start = start_sample
        self._merge_bytes = merge_bytes if worker.run is None else 0
        self._merge_wait = merge_wait
        self._offset = 0  # position of the next raw batch's first sample
        self._held: tuple[int, dict[str, Value], int, int, int] | None = None  # see _next_raw
        self._done = False
        self._error: Exception | None = None  # a reader failure held behind merged samples
        self._fast_reads = 0  # the reader's reads in a row that took less than merge_wait

    def __iter__(self) -> InlineRound:
        return self

    def _count_read(self, seconds: float) -> None:
        self._fast_reads = self._fast_reads + 1 if seconds < self._merge_wait else 0

    def _next_raw(self) -> tuple[int, dict[str, Value], int, int, int] | None:
        """The next batch reaching ``start_sample``, as (first id, feeds, n, skip, index): its
        ``skip`` first samples are below it. Without a program, they are sliced off already
        (skip 0); a program predicts the reader's whole batch, sliced afterwards."""
        if self._held is not None:
            held, self._held = self._held, None
            return held
        for raw in self._raw:
            first = self._offset
            self._offset += raw.n
            if self._offset <= self._start:
                continue
            feeds = raw.feeds(self._feed_list)
            skip = max(0, self._start - first)
            if skip and not self._merge_bytes and self._worker.run is not None:
                return first, feeds, raw.n, skip, raw.index
            if skip:
                feeds = {k: slice_value(v, skip, raw.n) for k, v in feeds.items()}
            return first + skip, feeds, raw.n - skip, 0, raw.index
        return None

    def __next__(self) -> Chunk:
        if self._done:
            raise StopIteration
        if self._error is not None:
            err, self._error = self._error, None
            self.close()
            raise err
        t0 = time.perf_counter()
        got = self._next_raw()
        began = last = time.perf_counter()
        self._count_read(began - t0)
        if got is None:
            self.close()
            raise StopIteration
        first, feeds, n, skip, index = got
        parts = [feeds]
        sig, size = _signature(feeds) if self._merge_bytes else (None, 0)
        while (
            sig is not None
            and size < self._merge_bytes
            and last - began < self._merge_wait
            and self._fast_reads >= FAST_READS
        ):
            try:
                more = self._next_raw()
            except Exception as exc:  # raised after the samples read before it are handed out
                self._error = exc
                break
            now = time.perf_counter()
            self._count_read(now - last)
            last = now
            if more is None:
                break
            more_sig, more_size = _signature(more[1])
            if more_sig != sig:
                self._held = more
                break
            parts.append(more[1])
            n += more[2]
            size += more_size
        if len(parts) > 1:
            feeds = {k: concat_values([p[k] for p in parts]) for k in feeds}
        return self._predict(first, feeds, n, skip, index)

    def _predict(self, first: int, feeds: dict[str, Value], n: int, skip: int, index: int) -> Chunk:
        worker = self._worker
        ids = f"sample ids {first + skip}..{first + n - 1}"
        where = ids if self._merge_bytes else f"batch {index} ({ids})"
        try:
            worker.prepare_thread()
            data = predict_batch(worker, self._schema, feeds, n, f"knowledge service, {where}")
        except Exception as exc:
            self.close()
            err = worker_error(exc, worker, where)
            if err is exc:
                raise
            raise err from exc
        if skip:
            data = {k: slice_value(v, skip, n) for k, v in data.items()}
        return Chunk(np.arange(first + skip, first + n, dtype=np.int64), data)

    def close(self) -> None:
        """Stop reading (idempotent)."""
        self._done = True
        close = getattr(self._raw, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # closing the reader is best effort
                close()

    def join(self, timeout: float = 10.0) -> bool:
        """No threads to wait for: always True (the same interface as the threaded round)."""
        return True

    def __enter__(self) -> InlineRound:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
