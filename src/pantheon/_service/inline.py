"""A round of a one-worker service, run in the thread that consumes it: no thread, no hand-off.

Python threads hand a batch to each other slowly: a thread woken by another gets the
interpreter only when the running one lets it go, which a busy thread does every 5 ms
(``sys.getswitchinterval()``). A reader thread feeding a prediction thread feeding the
consumer thus costs up to milliseconds per batch, the whole budget of a small one (see
``docs/design.md``, "The service's per-batch cost"). With one worker, the consumer's thread
reads, predicts and hands the chunk on itself; several workers keep their threads
(:mod:`pantheon._service.workers`), where overlapping devices is worth it.

When the service has no program (every schema source is a feed), consecutive reader batches
are merged while the reader keeps up (:func:`~pantheon._service.merging.merge_ready`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from .._chunks import Positions
from .._knowledge import Chunk, Value, slice_value
from .merging import MERGE_BYTES, MERGE_WAIT_S, ReadyChunks, merge_ready
from .programs import Worker, predict_batch, worker_error
from .readers import RawBatch

__all__ = ["InlineRound"]


class InlineRound(Iterator[Chunk]):
    """The chunks of one round of a one-worker service, read and predicted in the caller's
    thread (the worker's ``init_thread`` runs once in each thread that consumes a round).

    Args:
        raw: the reader's batches (:func:`~pantheon._service.readers.iter_raw_batches`).
        worker: the service's worker (``run`` ``None``: knowledge is the feeds, merged).
        feed_list / schema: as the service's.
        start_sample: batches that end at or below it are read and dropped; one that
            straddles it is sliced.
        merge_bytes / merge_wait: see :mod:`pantheon._service.merging` (``0`` bytes: no
            merging; batches are merged only without a program, whose batch size is the
            reader's).
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
        self._offset = 0  # position of the next raw batch's first sample
        self._done = False
        self._positions = Positions()  # the chunks' ids, cut from shared blocks
        each = self._each()
        self._out: Iterator[Chunk] = (
            merge_ready(each, self._merge_bytes, merge_wait) if self._merge_bytes else each
        )

    def __iter__(self) -> InlineRound:
        return self

    def _each(self) -> Iterator[Chunk]:
        """One chunk per reader batch reaching ``start_sample``. Without a program the samples
        below it are sliced off the feeds; a program predicts the reader's whole batch, sliced
        afterwards."""
        positions = self._positions
        passing = self._worker.run is None  # the knowledge is the feeds (checked by the reader)
        same = list(self._schema.items()) == [(f, f) for f in self._feed_list]  # feeds as-is
        for raw in self._raw:
            first = self._offset
            self._offset += raw.n
            if self._offset <= self._start:
                continue
            feeds = raw.feeds(self._feed_list)
            skip = max(0, self._start - first)
            if not passing:
                yield self._predict(first, feeds, raw.n, skip, raw.index)
                continue
            if skip:
                feeds = {k: slice_value(v, skip, raw.n) for k, v in feeds.items()}
            data = feeds if same else {key: feeds[src] for key, src in self._schema.items()}
            yield Chunk(positions.ids(first + skip, first + raw.n), data)

    def __next__(self) -> Chunk:
        if self._done:
            raise StopIteration
        try:
            return next(self._out)
        except BaseException:
            self.close()
            raise

    def _predict(self, first: int, feeds: dict[str, Value], n: int, skip: int, index: int) -> Chunk:
        worker = self._worker
        ids = f"sample ids {first + skip}..{first + n - 1}"
        where = ids if self._merge_bytes else f"batch {index} ({ids})"
        try:
            worker.prepare_thread()
            data = predict_batch(worker, self._schema, feeds, n, f"knowledge service, {where}")
        except Exception as exc:
            err = worker_error(exc, worker, where)
            if err is exc:
                raise
            raise err from exc
        if skip:
            data = {k: slice_value(v, skip, n) for k, v in data.items()}
        return Chunk(self._positions.ids(first + skip, first + n), data)

    def ready(self) -> int:
        """Chunks held, read ahead: the next ``ready()`` calls of ``next`` do not read."""
        return self._out.ready() if isinstance(self._out, ReadyChunks) else 0

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
