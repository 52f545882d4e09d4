"""The student's driver of one online teacher, against a real teacher over 127.0.0.1."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from pantheon import PantheonTimeoutError, Teacher
from pantheon._online.source import OnlineSource
from tests.helpers import wait_for


def test_a_goodbye_goes_after_what_the_machine_queued_before_it():
    """A reconnection queues its acknowledgements (the rounds done) under the lock and sends
    them after releasing it; a ``close()`` in between must not send its goodbye first: the
    teacher would see the student leave with its last round never done, and never finish."""
    teacher = Teacher(out_port=0, timeout=60)
    outcome: dict[str, Any] = {}

    def serve() -> None:
        teacher.start(timeout=60)
        try:
            teacher.serve(lambda: ({"x": np.arange(i, i + 4).reshape(4, 1)} for i in (0, 4)))
            outcome["served"] = True
        except Exception as exc:  # the assertion below names it
            outcome["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    source = OnlineSource(0, teacher.address, token=None, timeout=30)
    source.start(30)
    with source.cond:  # what link_up does on a new connection: queued, not yet sent
        source.queue(source.machine.ack_round(0))
    source.close()
    thread.join(30)
    alive = thread.is_alive()
    teacher.close()
    thread.join(30)
    assert not alive, "the teacher never heard the round was done before the goodbye"
    assert outcome == {"served": True}


def test_start_returns_for_a_student_that_came_and_left_before_it():
    """``Teacher.start()`` waits until a student *has* connected: one that connected, said it
    was done and left before the teacher's program called ``start`` counts (the race behind
    the test above), and the next ``start`` waits for a newcomer."""
    with Teacher(out_port=0, timeout=30) as teacher:
        source = OnlineSource(0, teacher.address, token=None, timeout=30)
        source.start(30)
        assert wait_for(lambda: teacher.stats()["students"] == 1)
        source.close()
        assert wait_for(lambda: teacher.stats()["students"] == 0)
        teacher.start(timeout=5)  # before: waited the 5 s, then PantheonTimeoutError
        with pytest.raises(PantheonTimeoutError, match="no student connected"):
            teacher.start(timeout=0.2)


@pytest.mark.timeout(60)
def test_a_send_that_fails_with_more_waiting_does_not_hang_the_flush():
    """A failed send closes the session, and its ``on_close`` flushes again in the same
    thread, which holds the link's send lock: with more messages waiting behind the failed
    one, that flush waited for the lock its own thread held, forever (and ``close()`` after
    it)."""
    with Teacher(out_port=0, timeout=30) as teacher:
        source = OnlineSource(0, teacher.address, token=None, timeout=30)
        source.start(30)
        link = source.links[0]
        assert link.session is not None

        def broken(*args: Any, **kwargs: Any) -> None:
            raise OSError("the network went away")

        link.session.conn.send = broken  # type: ignore[method-assign]
        with source.cond:  # two messages waiting: the first send fails, the second waits
            actions = source.machine.ack_round(0)
            source.queue(actions + actions)
        assert len(link.pending) >= 2
        flusher = threading.Thread(target=source.flush, daemon=True)
        flusher.start()
        flusher.join(10)
        hung = flusher.is_alive()
        if not hung:
            source.close()
        assert not hung, "flush waited for the send lock its own thread held"
        assert not link.pending
