"""The student's driver of one online teacher, against a real teacher over 127.0.0.1."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from pantheon import ConnectionLostError, PantheonTimeoutError, Student, Teacher, TeacherError
from pantheon._online.source import OnlineSource
from pantheon._util import Deadline
from pantheon._wire import listen, server_handshake
from tests.helpers import Runner, free_port, wait_for


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


@pytest.mark.timeout(60)
def test_a_reconnection_that_finishes_after_close_is_closed() -> None:
    """``close()`` while a reconnection was in its handshake saw no session and returned;
    the handshake then finished and started a session nobody closed: its threads, its
    socket and the teacher's view of a connected student lived on."""
    listener = listen("127.0.0.1", 0)
    accepted = threading.Event()
    go_on = threading.Event()
    outcome: dict[str, Any] = {}

    def teacher() -> None:
        first = listener.accept(timeout=20)
        server_handshake(first, None, timeout=10)
        first.close()  # the teacher drops the first connection: the student reconnects
        second = listener.accept(timeout=20)
        accepted.set()
        assert go_on.wait(20)  # a slow handshake: the student closes meanwhile
        server_handshake(second, None, timeout=10)
        deadline = Deadline(10)
        try:
            while not deadline.expired:  # the student's heartbeats, until it closes
                second.recv(timeout=max(deadline.left(), 0.01))
            outcome["end"] = "still connected 10 s after the student closed"
        except (ConnectionLostError, PantheonTimeoutError) as exc:
            outcome["end"] = type(exc).__name__
        finally:
            second.close()

    runner = Runner(teacher)
    source = OnlineSource(0, listener.address, token=None, timeout=30, transport="tcp")
    try:
        source.start(10)
        assert accepted.wait(20)
        source.close()
        go_on.set()
        runner.join(30)
    finally:
        go_on.set()
        source.close()
        listener.close()
    assert outcome["end"] == "ConnectionLostError"
    assert source.links[0].session is None


@pytest.mark.timeout(60)
def test_starting_again_after_one_teacher_was_not_up_keeps_the_others_connected() -> None:
    """``Student.start()`` failed on a teacher not up yet and was called again: the teacher
    already connected was connected a second time, and the close of the replaced connection
    took the live one down (``send`` then waited and failed with "not connected")."""
    port = free_port()
    with Teacher(out_port=0, timeout=30) as first:
        student = Student(timeout=30, transport="tcp")
        try:
            student.register_teacher(in_address=first.address)
            student.register_teacher(in_address=f"127.0.0.1:{port}")
            with pytest.raises(TeacherError, match="could not connect"):
                student.start(timeout=1)
            with Teacher(out_port=port, timeout=30):
                student.start(timeout=10)
                student.send("hello", teacher_ids=0, timeout=10)
                assert first.recv(timeout=10) == "hello"
                assert first.stats()["students"] == 1
                assert student.stats()["reconnects"] == 0
        finally:
            student.close()


@pytest.mark.timeout(60)
def test_a_replica_not_up_at_the_start_is_connected_once_it_is() -> None:
    """A replica that was not up when the student started was never connected later, so a
    fail-over to it found no link."""
    port = free_port()
    with Teacher(out_port=0, timeout=30) as first, Student(timeout=30) as student:
        student.register_teacher(in_address=[first.address, f"127.0.0.1:{port}"])
        student.start(timeout=10)
        with Teacher(out_port=port, timeout=30) as second:
            assert wait_for(lambda: second.stats()["students"] == 1)
            assert first.stats()["students"] == 1
