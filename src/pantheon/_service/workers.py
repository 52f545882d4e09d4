"""Ordered multi-worker prediction: one round of the knowledge service.

With several workers, one *dispatcher* thread runs the reader and queues batches; each
:class:`~._programs.Worker` has a thread that takes the next queued batch as soon as it is idle
(so a faster device takes more batches), predicts it and files the result under the batch's
sequence number; the consumer (:class:`RoundIterator`) hands chunks out strictly in reader
order, whatever order the workers finish in. At most ``buf_size`` batches are in flight (read
and not yet handed out), so a slow consumer holds the reader back, and prediction of the next
batches overlaps the consumer's work on the current one. A one-worker service has no threads
at all (:mod:`pantheon._service.inline`).

Every wait is on one condition variable that each state change (a result, a failure, the end of
the reader, ``close()``) notifies; the consumer also re-checks at least once a second that the
threads are alive, so nothing waits forever on a thread that is gone.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import WorkerError
from .._knowledge import Chunk, slice_value
from .._util import Deadline
from .inline import InlineRound
from .programs import Worker, predict_batch, worker_error
from .readers import RawBatch

__all__ = ["RoundIterator"]

_POLL_S = 1.0


class _Job:
    __slots__ = ("first_id", "raw", "seq", "skip")

    def __init__(self, seq: int, raw: RawBatch, first_id: int, skip: int) -> None:
        self.seq = seq
        self.raw = raw
        self.first_id = first_id
        self.skip = skip

    def describe(self) -> str:
        last = self.first_id + self.raw.n - 1
        return f"batch {self.raw.index} (sample ids {self.first_id}..{last})"


class _RoundState:
    """State shared by the round's threads; the iterator wrapper owns it."""

    def __init__(
        self,
        raw: Iterator[RawBatch],
        workers: Sequence[Worker],
        feed_list: Sequence[str],
        schema: Mapping[str, str],
        buf_size: int,
        start_sample: int,
    ) -> None:
        self.raw = raw
        self.workers = workers
        self.feed_list = list(feed_list)
        self.schema = dict(schema)
        self.buf_size = max(1, buf_size)
        self.start_sample = start_sample
        self.cond = threading.Condition()
        self.pending: deque[tuple[_Job, dict[str, Any]]] = deque()
        self.results: dict[int, Chunk | BaseException] = {}
        self.submitted = 0
        self.next_seq = 0
        self.in_flight = 0
        self.reader_done = False
        self.reader_error: BaseException | None = None
        self.failure: BaseException | None = None  # raised at once: not tied to a batch
        self.fail_seq: int | None = None  # the earliest batch that failed (its error in results)
        self.closed = False
        self.threads: list[threading.Thread] = []

    # ---- threads -------------------------------------------------------------------------
    def start(self) -> None:
        self.threads.append(
            threading.Thread(target=self._dispatch, name="pantheon-service-reader", daemon=True)
        )
        for w in self.workers:
            self.threads.append(
                threading.Thread(
                    target=self._work, args=(w,), name=f"pantheon-service-{w.name}", daemon=True
                )
            )
        for t in self.threads:
            t.start()

    def _jobs(self) -> Iterator[_Job]:
        """The batches to predict: those below ``start_sample`` are read but not predicted."""
        offset = 0
        seq = 0
        for raw in self.raw:
            first = offset
            offset += raw.n
            if offset <= self.start_sample:
                continue
            yield _Job(seq, raw, first, max(0, self.start_sample - first))
            seq += 1

    def _dispatch(self) -> None:
        jobs = self._jobs()
        try:
            while True:
                with self.cond:
                    while self.in_flight >= self.buf_size and not self._stopping():
                        self.cond.wait()
                    if self._stopping():
                        return
                job = next(jobs, None)
                if job is None:
                    break
                feeds = job.raw.feeds(self.feed_list)
                with self.cond:
                    self.pending.append((job, feeds))
                    self.submitted += 1
                    self.in_flight += 1
                    self.cond.notify_all()
        except BaseException as exc:
            with self.cond:
                self.reader_error = exc
                self.cond.notify_all()
        finally:
            close = getattr(self.raw, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # closing the reader is best effort
                    close()
            with self.cond:
                self.reader_done = True
                self.cond.notify_all()

    def _stopping(self) -> bool:
        """Whether the reader must stop (close, or any failure)."""
        return self.closed or self.failure is not None or self.fail_seq is not None

    def _take(self) -> tuple[_Job, dict[str, Any]] | None:
        """Called with the lock held: the next batch to predict, or None when the worker must
        end. After a failure, the batches before the failed one are still predicted (so the
        consumer gets every chunk before it), the later ones are dropped."""
        while True:
            if self.closed or self.failure is not None:
                return None
            if self.pending:
                if self.fail_seq is not None and self.pending[0][0].seq > self.fail_seq:
                    return None
                return self.pending.popleft()
            if self.reader_done or self.fail_seq is not None:
                return None
            self.cond.wait()

    def _work(self, worker: Worker) -> None:
        job: _Job | None = None
        try:
            worker.prepare_thread()
            while True:
                with self.cond:
                    taken = self._take()
                if taken is None:
                    return
                job, feeds = taken
                chunk = self._predict(worker, job, feeds)
                with self.cond:
                    self.results[job.seq] = chunk
                    self.cond.notify_all()
                job = None
        except BaseException as exc:
            err = _wrap(exc, worker, job)
            with self.cond:
                if job is None:
                    self.failure = self.failure or err
                else:
                    self.results[job.seq] = err
                    if self.fail_seq is None or job.seq < self.fail_seq:
                        self.fail_seq = job.seq
                self.cond.notify_all()

    def _predict(self, worker: Worker, job: _Job, feeds: dict[str, Any]) -> Chunk:
        where = f"knowledge service, {worker.name}, {job.describe()}"
        data = predict_batch(worker, self.schema, feeds, job.raw.n, where)
        n = job.raw.n
        if job.skip:
            data = {k: slice_value(v, job.skip, n) for k, v in data.items()}
        ids = np.arange(job.first_id + job.skip, job.first_id + n, dtype=np.int64)
        return Chunk(ids, data)

    # ---- consumer ------------------------------------------------------------------------
    def next_chunk(self) -> Chunk:
        with self.cond:
            while True:
                result = self.results.pop(self.next_seq, None)
                if result is not None:
                    self.next_seq += 1
                    self.in_flight -= 1
                    self.cond.notify_all()
                    if isinstance(result, BaseException):
                        self.failure = result  # raised again by any later call
                        self._close_locked()
                        raise result
                    return result
                if self.failure is not None:
                    self._close_locked()
                    raise self.failure
                if self.reader_done and self.next_seq == self.submitted:
                    if self.reader_error is not None:
                        err, self.reader_error = self.reader_error, None
                        self._close_locked()
                        raise err
                    self._close_locked()
                    raise StopIteration
                if self.closed:
                    raise StopIteration
                self.cond.wait(_POLL_S)
                self._check_alive()

    def _check_alive(self) -> None:
        """Called with the lock held: turn threads that vanished into a failure."""
        if self.closed or self.failure is not None:
            return
        workers = self.threads[1:]
        unfinished = self.submitted - self.next_seq - len(self.results)  # queued or computing
        if workers and unfinished > 0 and not any(t.is_alive() for t in workers):
            self.failure = WorkerError(
                "knowledge service: every worker thread has stopped while batches were still "
                "waiting to be predicted"
            )

    def _close_locked(self) -> None:
        self.closed = True
        self.pending.clear()
        self.results.clear()
        self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self._close_locked()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds in all for the threads to end; True if they all did."""
        me = threading.current_thread()
        deadline = Deadline(timeout)
        for t in self.threads:
            if t is not me:
                t.join(deadline.left())
        return not any(t.is_alive() for t in self.threads if t is not me)


def _wrap(exc: BaseException, worker: Worker, job: _Job | None) -> BaseException:
    return worker_error(exc, worker, job.describe() if job is not None else None)


class RoundIterator(Iterator[Chunk]):
    """The chunks of one round, in reader order; closes its threads when closed or collected.

    Use it as an iterator (``for chunk in it``), and call :meth:`close` (or use ``with``) to
    abandon a round early; a worker that raises makes ``next()`` raise
    :class:`~pantheon.WorkerError` (the original exception as ``__cause__``) after the chunks
    before the failed batch, and stops every worker.
    """

    def __init__(
        self,
        raw: Iterator[RawBatch],
        workers: Sequence[Worker],
        feed_list: Sequence[str],
        schema: Mapping[str, str],
        buf_size: int,
        start_sample: int,
    ) -> None:
        self._inline: InlineRound | None = None
        if len(workers) == 1 or all(w.run is None for w in workers):  # no threads: see inline
            self._inline = InlineRound(raw, workers[0], feed_list, schema, start_sample)
            self._finalizer = weakref.finalize(self, self._inline.close)
            return
        self._state = _RoundState(raw, workers, feed_list, schema, buf_size, start_sample)
        self._finalizer = weakref.finalize(self, self._state.close)
        self._state.start()

    def __iter__(self) -> RoundIterator:
        return self

    def __next__(self) -> Chunk:
        if self._inline is not None:
            return next(self._inline)
        return self._state.next_chunk()

    def ready(self) -> int:
        """Chunks held that ``next`` gives without reading (read ahead by a one-worker round)."""
        return self._inline.ready() if self._inline is not None else 0

    def close(self) -> None:
        """Stop reading and predicting; threads end after the batch each is on (idempotent)."""
        self._finalizer()

    def join(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` seconds for the round's threads to end (after :meth:`close`
        or the end of the round); returns whether they all did."""
        if self._inline is not None:
            return True
        return self._state.join(timeout)

    def __enter__(self) -> RoundIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
