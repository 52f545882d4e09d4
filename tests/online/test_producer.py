"""The teacher's producers: a round factory's failure, or knowledge that cannot be sent,
reaches the students and the serve call, and stopping the producers is safe from any thread.
Real sockets on 127.0.0.1."""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np
import pytest

from pantheon import Student, Teacher, TeacherError
from pantheon._online.fanout import StartCursor
from pantheon._online.producer import CursorRunner
from pantheon._online.teacher_machine import TeacherMachine
from tests.helpers import Runner

pytestmark = pytest.mark.timeout(60)


def test_a_round_factory_that_raises_when_called_fails_the_serving() -> None:
    """A factory that is a plain function (not a generator) and raises on the call, as one
    that opens its data first does: its producer thread died before its error handling, and
    the student waited for a description that never came, the teacher for its timeout."""

    def make_round(round_index: int, start: int) -> Any:
        raise FileNotFoundError("data.bin")

    with Teacher(out_port=0, timeout=30) as teacher:
        runner = Runner(lambda: teacher.serve_rounds(make_round))
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address)
            with pytest.raises(TeacherError, match=r"FileNotFoundError: data\.bin"):
                student.get_knowledge_desc()
        with pytest.raises(FileNotFoundError, match=r"data\.bin"):
            runner.join(30)


def test_knowledge_its_codec_refuses_fails_the_serving_instead_of_reconnecting() -> None:
    """A batch after the first holds a value out of its int16 codec's range: it fails when
    it is encoded for the student, after the description was checked. Only that student's
    connection was closed: it reconnected, resumed at the same sample and was closed again,
    hundreds of times a second, until it ended with "sent no knowledge"."""

    def reader() -> Any:
        for i in range(3):
            yield {"double": np.full((4, 1), 10**6 if i == 1 else 1, dtype=np.int64)}

    with Teacher(out_port=0, timeout=30, codecs={"double": "int16"}) as teacher:
        runner = Runner(lambda: teacher.serve(reader))
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address)
            with pytest.raises(TeacherError, match=r"could not be sent: .*does not fit in int16"):
                for _ in student.get_knowledge_generator(4)():
                    pass
            assert student.stats()["reconnects"] == 0
        with pytest.raises(TeacherError, match=r"does not fit in int16"):
            runner.join(30)


def test_stopping_every_producer_from_two_threads_at_once() -> None:
    """``close()`` and the serving loop's end both call ``stop_all``, at the same moment: it
    went over the stops unlocked while the other cleared them, and could raise
    ``RuntimeError: dictionary changed size during iteration``, leaving ``close()`` half
    done."""
    errors: list[BaseException] = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two bytecodes
    try:
        for _ in range(20):
            cond = threading.Condition(threading.RLock())
            gate = threading.Event()

            def make_round(round_index: int, start: int, gate: threading.Event = gate) -> Any:
                gate.wait(20)
                return iter(())

            runner = CursorRunner(
                TeacherMachine(), make_round, cond, desc_of=lambda c: {}, run=lambda a: None
            )
            with cond:  # as the serving loop carries out the machine's StartCursors
                for i in range(100):
                    runner.apply(StartCursor(id=i, round=0, start=0))

            def stop(runner: CursorRunner = runner) -> None:
                try:
                    runner.stop_all()
                except BaseException as exc:
                    errors.append(exc)

            stoppers = [threading.Thread(target=stop) for _ in range(2)]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(30)
            gate.set()  # the stopped producers end
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors
