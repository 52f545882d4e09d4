"""A round without a program: the reader's feeds passed through as knowledge, in the caller's
thread, small reader batches merged.

When the service has no program (every schema source is a feed), there is nothing to predict
and nothing to overlap, so the round runs in the thread that consumes it: no thread, no
hand-off. Consecutive reader batches are merged into one chunk of up to ``merge_bytes`` bytes
(feeds concatenated sample-wise, one copy) while the reader keeps up: a merge ends once
``merge_wait`` seconds have passed since it began, or as soon as one read took longer than
that, so a slow reader's knowledge is not held back (by at most ``merge_wait`` plus one read
that was expected to be fast). Merging keeps order and ids (a chunk is a run of
consecutive positions); batches whose fields differ in dtype or trailing shape are never
merged, so that the teacher's check reports them as it would unmerged.

See ``docs/design.md`` ("The service's per-batch cost") for the measurements behind this.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._knowledge import Chunk, Ragged, Value, concat_values, slice_value
from .programs import Worker, predict_batch
from .readers import RawBatch

__all__ = ["MERGE_BYTES", "MERGE_WAIT_S", "PassThroughRound"]

MERGE_BYTES = 256 * 1024
"""Bytes of feeds merged into one chunk at most (default 256 KiB, the wire's coalescing size)."""
MERGE_WAIT_S = 0.005
"""Seconds a merge may wait for the reader's next batch (default 5 ms)."""


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


class PassThroughRound(Iterator[Chunk]):
    """The chunks of one round of a service without a program, read in the caller's thread.

    Args:
        raw: the reader's batches (:func:`~pantheon._service.readers.iter_raw_batches`).
        worker: the service's first worker (its ``run`` is ``None``: knowledge is the feeds).
        feed_list / schema: as the service's.
        start_sample: batches that end at or below it are read and dropped; one that
            straddles it is sliced.
        merge_bytes / merge_wait: see the module docstring (``0`` bytes: no merging).
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
        self._merge_bytes = merge_bytes
        self._merge_wait = merge_wait
        self._offset = 0  # position of the next raw batch's first sample
        self._held: tuple[int, dict[str, Value], int] | None = None  # (first id, feeds, n)
        self._done = False
        self._error: Exception | None = None  # a reader failure held behind merged samples
        self._fast = True  # whether the reader's last read took less than merge_wait

    def __iter__(self) -> PassThroughRound:
        return self

    def _next_raw(self) -> tuple[int, dict[str, Value], int] | None:
        """The next batch from ``start_sample`` on, as (first id, feeds, n), or None at the end."""
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
            if skip:
                feeds = {k: slice_value(v, skip, raw.n) for k, v in feeds.items()}
            return first + skip, feeds, raw.n - skip
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
        self._fast = began - t0 < self._merge_wait
        if got is None:
            self.close()
            raise StopIteration
        first, feeds, n = got
        parts = [feeds]
        sig, size = _signature(feeds)
        while (
            sig is not None
            and size < self._merge_bytes
            and last - began < self._merge_wait
            and self._fast
        ):
            try:
                more = self._next_raw()
            except Exception as exc:  # raised after the samples read before it are handed out
                self._error = exc
                break
            now = time.perf_counter()
            self._fast = now - last < self._merge_wait
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
        where = f"knowledge service, samples {first}..{first + n - 1}"
        data = predict_batch(self._worker, self._schema, feeds, n, where)
        return Chunk(np.arange(first, first + n, dtype=np.int64), data)

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

    def __enter__(self) -> PassThroughRound:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
