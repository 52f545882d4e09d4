"""Query mode on the teacher: dynamic batching of the queries of many students.

Queries of every connected student go into one bounded queue. A batcher thread takes the
oldest and, when ``max_batch`` is set, merges the queries queued behind it (the same fields,
dtypes and trailing shapes) until they hold ``max_batch`` samples or ``max_delay`` seconds
passed since the first: one program call answers them all, as inference servers do, and each
answer goes back to its student. Queries are answered in the order they arrived, so each
student gets its answers in its own order.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import KnowledgeError, error_text
from .._knowledge import Chunk, Knowledge, concat_values, describe, normalize_batch, slice_value
from .._util import Deadline, wait_until
from .._wire import MsgType, frames_nbytes
from .messages import ErrorCode, Fail, header
from .payload import Counters, encode_chunks
from .peer import Peer

__all__ = [
    "CALLS_KEPT",
    "PendingQuery",
    "QueryBatcher",
    "send_answer",
    "stopped_answering",
]

log = logging.getLogger("pantheon")

CALLS_KEPT = 1024
"""Program calls whose sizes :attr:`QueryBatcher.calls` keeps (the last ones)."""

Handler = Callable[[dict[str, Any]], Mapping[str, Any]]
Reply = Callable[["PendingQuery", Chunk | None, str | None], None]


@dataclass(frozen=True, slots=True)
class PendingQuery:
    """One query: who asked (``cid``), its id there (``qid``) and its feeds."""

    cid: int
    qid: int
    feeds: Chunk


def stopped_answering(qid: int) -> Fail:
    """The ERROR a student gets for query ``qid`` when the batcher stopped before taking it."""
    return Fail(f"query {qid}: the teacher stopped answering", ErrorCode.FAILED, qid)


class QueryBatcher:
    """Answer queries with ``handler(feeds) -> knowledge``, merging them up to ``max_batch``.

    Args:
        handler: the knowledge service's query handler.
        reply: called with each query and its answer (``None`` and a message on failure); when
            it raises for an answer, it is called again with that error as the message.
        max_batch: samples per program call at most when merging (``None``: never merge).
        max_delay: seconds to wait for more queries to merge behind the first (default 0.002).
        max_queued: queries waiting at most; a student sending more waits (backpressure).
    """

    def __init__(
        self,
        handler: Handler,
        reply: Reply,
        *,
        max_batch: int | None = None,
        max_delay: float = 0.002,
        max_queued: int = 1024,
    ) -> None:
        self._handler = handler
        self._reply = reply
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._max_queued = max_queued
        self._queue: collections.deque[PendingQuery] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        # samples of each of the last CALLS_KEPT program calls (for tests and benchmarks)
        self.calls: collections.deque[int] = collections.deque(maxlen=CALLS_KEPT)
        self._thread = threading.Thread(target=self._run, name="pantheon-queries", daemon=True)
        self._thread.start()

    def submit(self, query: PendingQuery, timeout: float) -> bool:
        """Queue a query (waits while the queue is full, at most ``timeout`` s); False if
        the batcher stopped or the queue stayed full (:meth:`refusal` says which)."""
        with self._cond:
            room = wait_until(
                self._cond,
                lambda: self._stopped or len(self._queue) < self._max_queued,
                Deadline(timeout),
            )
            if self._stopped or not room:
                return False
            self._queue.append(query)
            self._cond.notify_all()
            return True

    def refusal(self, qid: int, timeout: float) -> Fail:
        """The ERROR for query ``qid``, which :meth:`submit` (waiting ``timeout`` s) refused."""
        if self._stopped:
            return stopped_answering(qid)
        return Fail(
            f"query {qid}: the teacher's query queue stayed full ({self._max_queued} queries) "
            f"for {timeout:g} s; its program answers slower than its students ask: set "
            "max_batch to answer several queries per call, or serve with more replicas",
            ErrorCode.FAILED,
            qid,
        )

    def submit_held(self, queries: list[PendingQuery]) -> bool:
        """Queue the queries held before the serving started, in their order, at once: this
        never waits (it is called under the teacher's lock, which answering takes), so the
        queue may go past ``max_queued`` by what was held (bounded by the early requests of
        each client); later :meth:`submit` calls wait until it is back under. False, and
        nothing queued, if the batcher stopped."""
        with self._cond:
            if self._stopped:
                return False
            self._queue.extend(queries)
            self._cond.notify_all()
            return True

    def drop(self, cid: int) -> None:
        """Forget the queued queries of a student that is gone."""
        with self._cond:
            kept = [q for q in self._queue if q.cid != cid]
            self._queue.clear()
            self._queue.extend(kept)

    def stop(self) -> None:
        """Stop after the call in progress (idempotent); each query still queued is replied
        to with the error that the teacher stopped answering."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the thread

    def _take(self) -> list[PendingQuery]:
        """The next queries to answer with one call (holds the lock)."""
        first = self._queue.popleft()
        batch = [first]
        if self._max_batch is None:
            return batch
        want = describe(first.feeds.data)
        size = len(first.feeds.ids)
        deadline = Deadline(self._max_delay)
        while size < self._max_batch:
            if not self._queue:
                if not wait_until(self._cond, lambda: bool(self._queue) or self._stopped, deadline):
                    break
                if not self._queue:
                    break
            nxt = self._queue[0]
            n = len(nxt.feeds.ids)
            if size + n > self._max_batch or describe(nxt.feeds.data) != want:
                break
            batch.append(self._queue.popleft())
            size += n
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                wait_until(self._cond, lambda: bool(self._queue) or self._stopped, Deadline(None))
                if self._stopped:
                    left = list(self._queue)
                    self._queue.clear()
                    break
                batch = self._take()
                self._cond.notify_all()
            try:
                self._answer(batch)
            except Exception:  # a bug must not leave queries queued behind a dead thread
                log.exception("answering a query batch of %d queries failed", len(batch))
        for q in left:  # never taken: each student hears its query will not be answered
            self._send_reply(q, None, stopped_answering(q.qid).message)

    def _send_reply(self, q: PendingQuery, answer: Chunk | None, error: str | None) -> None:
        """Reply to ``q``; an answer that cannot be sent (its knowledge does not fit the
        teacher's codecs, say) is replied to with the error instead."""
        try:
            self._reply(q, answer, error)
            return
        except Exception as exc:
            if answer is None:
                log.exception("could not tell query %d of student %d it failed", q.qid, q.cid)
                return
            what = error_text(exc)
        log.error("the answer to query %d could not be sent: %s", q.qid, what)
        self._send_reply(q, None, f"query {q.qid} failed on the teacher: {what}")

    def _answer(self, batch: list[PendingQuery]) -> None:
        sizes = [len(q.feeds.ids) for q in batch]
        feeds = (
            dict(batch[0].feeds.data)
            if len(batch) == 1
            else {k: concat_values([q.feeds.data[k] for q in batch]) for k in batch[0].feeds.data}
        )
        total = sum(sizes)
        t0 = time.perf_counter()
        try:
            knowledge, n = normalize_batch(self._handler(feeds), where="a query answer")
            if n != total:
                raise KnowledgeError(
                    f"the query handler returned {n} samples for queries of {total}; every "
                    "output must keep the batch dimension first"
                )
        except Exception as exc:  # the query's own fault or the program's: it answers them
            what = error_text(exc)
            for q in batch:
                self._send_reply(q, None, f"query {q.qid} failed on the teacher: {what}")
            log.error("a query batch of %d samples failed: %s", total, what)
            return
        self.calls.append(total)
        log.debug(
            "answered %d queries (%d samples) in %.4f s",
            len(batch),
            total,
            time.perf_counter() - t0,
        )
        offset = 0
        for q, size in zip(batch, sizes, strict=True):
            part: Knowledge = {
                k: slice_value(v, offset, offset + size) for k, v in knowledge.items()
            }
            self._send_reply(q, Chunk(np.asarray(q.feeds.ids), part), None)
            offset += size


def send_answer(
    peer: Peer,
    query: PendingQuery,
    answer: Chunk | None,
    error: str | None,
    codecs: Mapping[str, Any],
    stats: Counters,
) -> None:
    """Send ``peer`` the ANSWER to ``query`` (counted in the teacher's ``stats``), or the
    ERROR saying why it failed."""
    if answer is None:
        peer.send(*header(Fail(error or "the query failed", ErrorCode.FAILED, query.qid)))
        return
    head, frames = encode_chunks([answer], codecs)
    head["qid"] = query.qid
    peer.send(MsgType.ANSWER, head, frames)
    stats.add(bytes=frames_nbytes(frames), batches=1, samples=len(answer.ids))
