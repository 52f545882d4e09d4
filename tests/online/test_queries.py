"""The query batcher in memory: a real batcher thread, a handler and a reply that records."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from pantheon._knowledge import Chunk
from pantheon._online.queries import CALLS_KEPT, PendingQuery, QueryBatcher

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """The replies a batcher made, in order; ``gate`` holds the handler until it is set."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, list[int] | None, str | None]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()  # set when the handler is first called
        self.cond = threading.Condition()

    def handler(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return {"double": 2 * np.asarray(feeds["x"])}

    def reply(self, query: PendingQuery, answer: Chunk | None, error: str | None) -> None:
        got = None if answer is None else answer.data["double"].ravel().tolist()
        with self.cond:
            self.replies.append((query.qid, got, error))
            self.cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.replies) >= n, 20), self.replies


def query(qid: int) -> PendingQuery:
    return PendingQuery(0, qid, Chunk(np.array([qid]), {"x": np.array([[qid]])}))


def test_held_queries_go_past_max_queued_at_once_and_in_order() -> None:
    rec = Recorder()
    batcher = QueryBatcher(rec.handler, rec.reply, max_queued=2)
    try:
        assert batcher.submit_held([query(i) for i in range(10)])  # does not wait for room
        full = batcher.submit(query(10), timeout=0.05)  # over max_queued: waits, and times out
        assert not full
        rec.gate.set()
        rec.wait_for(10)
        assert batcher.submit(query(11), timeout=5)  # back under max_queued
        rec.wait_for(11)
    finally:
        batcher.stop()
    assert rec.replies == [(i, [2 * i], None) for i in [*range(10), 11]]


def test_a_stopped_batcher_takes_no_held_queries() -> None:
    rec = Recorder()
    batcher = QueryBatcher(rec.handler, rec.reply)
    batcher.stop()
    assert not batcher.submit_held([query(0)])
    assert not batcher.submit(query(1), timeout=1)
    assert rec.replies == []


def test_merged_held_queries_are_answered_each_with_its_own_part() -> None:
    rec = Recorder()
    rec.gate.set()
    batcher = QueryBatcher(rec.handler, rec.reply, max_batch=4, max_delay=0.5)
    try:
        assert batcher.submit_held([query(i) for i in range(6)])
        rec.wait_for(6)
    finally:
        batcher.stop()
    assert rec.replies == [(i, [2 * i], None) for i in range(6)]
    assert sum(batcher.calls) == 6 and max(batcher.calls) > 1, batcher.calls


def test_an_answer_that_cannot_be_sent_fails_that_query_and_the_batcher_goes_on() -> None:
    """The reply raises for an answer (its knowledge does not fit the teacher's codecs):
    that query is told why, and the batcher thread lives on to answer the next ones."""
    rec = Recorder()
    rec.gate.set()

    def reply(q: PendingQuery, answer: Chunk | None, error: str | None) -> None:
        if q.qid == 1 and answer is not None:
            raise KeyError("codec names key 'logits', which the answer does not have")
        rec.reply(q, answer, error)

    batcher = QueryBatcher(rec.handler, reply)
    try:
        for i in range(3):
            assert batcher.submit(query(i), timeout=5)
        rec.wait_for(3)
    finally:
        batcher.stop()
    assert rec.replies[0] == (0, [0], None)
    qid, got, error = rec.replies[1]
    assert (qid, got) == (1, None)
    assert error is not None and "query 1 failed on the teacher: KeyError" in error
    assert "'logits'" in error
    assert rec.replies[2] == (2, [4], None)


def test_stopping_tells_each_query_still_queued_it_will_not_be_answered() -> None:
    rec = Recorder()
    batcher = QueryBatcher(rec.handler, rec.reply)
    assert batcher.submit_held([query(i) for i in range(4)])
    assert rec.entered.wait(20)  # 0 is taken, 1-3 wait
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    rec.gate.set()  # the call in progress ends; the queued ones are never taken
    stopper.join(20)
    assert not stopper.is_alive()
    assert rec.replies[0] == (0, [0], None)
    assert len(rec.replies) == 4, rec.replies
    for qid, (got_qid, got, error) in zip(range(1, 4), rec.replies[1:], strict=True):
        assert (got_qid, got) == (qid, None)
        assert error == f"query {qid}: the teacher stopped answering"


def test_the_sizes_of_only_the_last_calls_are_kept() -> None:
    """One size per program call, for the service's whole life, grew without bound."""
    rec = Recorder()
    rec.gate.set()
    batcher = QueryBatcher(rec.handler, rec.reply)
    try:
        n = CALLS_KEPT + 10
        assert batcher.submit_held([query(i) for i in range(n)])
        rec.wait_for(n)
    finally:
        batcher.stop()
    assert len(batcher.calls) == CALLS_KEPT
