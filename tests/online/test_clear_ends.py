"""Round-count mismatches end at once with an error that says so, in both directions.

The timeouts are small (20 s) but far above what a clear end takes: the old behaviour (waiting
out a timeout) fails these tests with a timeout error instead of the expected message.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pantheon import ClosedError, Student, Teacher, TeacherError
from tests.helpers import ROOT, Runner

SERVED = r"teacher 0 \(127\.0\.0\.1:\d+\) served its 2 round\(s\) \(times=2\); this is round 2"


def reader():
    for start in range(0, 50, 10):
        yield {"x": np.arange(start, start + 10).reshape(-1, 1)}


def test_a_student_asking_for_more_rounds_than_a_teacher_process_served(teacher_proc) -> None:
    proc = teacher_proc("--samples", "50", "--times", "2", "--timeout", "20")
    with Student(timeout=20) as student:
        student.register_teacher(in_address=proc.address())
        gen = student.get_knowledge_generator(25)
        for _ in range(2):
            assert sum(len(b["x"]) for b in gen()) == 50
        assert proc.finish(20) == 0  # the teacher served its rounds and is gone
        with pytest.raises(TeacherError, match=SERVED):
            list(gen())


def test_a_late_student_of_a_teacher_done_serving_is_told_at_once() -> None:
    with Teacher(out_port=0, timeout=20) as teacher:
        with Student(timeout=20) as first:
            first.register_teacher(in_address=teacher.address)
            runner = Runner(lambda: teacher.serve(reader, times=2))
            gen = first.get_knowledge_generator(25)
            assert [len(list(gen())) for _ in range(2)] == [2, 2]
            runner.join(20)
            state = first.state_dict()  # round 2: after the last
        with Student(timeout=20) as late:  # the teacher is open, but serves no more
            late.register_teacher(in_address=teacher.address)
            late.load_state_dict(state)
            with pytest.raises(TeacherError, match=SERVED):
                list(late.get_knowledge_generator(25)())


STUDENT_LEAVES = """
import sys
from pantheon import Student
student = Student(timeout=20)
student.register_teacher(in_address=sys.argv[1])
n = sum(len(b["x"]) for b in student.get_knowledge_generator(25)())
print("READ", n, flush=True)
# the program ends here without student.close(): it is done
"""


def test_a_teacher_whose_student_process_ended_before_its_last_round(spawn) -> None:
    with Teacher(out_port=0, timeout=20) as teacher:
        runner = Runner(lambda: teacher.serve(reader, times=3))
        proc = spawn(["-c", STUDENT_LEAVES, teacher.address], {"PYTHONPATH": str(ROOT / "src")})
        assert proc.wait_line("READ") == "READ 50"
        assert proc.finish(20) == 0
        with pytest.raises(
            TeacherError, match=r"group 'default' left after round 0 \(of rounds 0\.\.2\)"
        ):
            runner.join(20)


def test_a_student_closed_for_resuming_is_waited_for() -> None:
    with Teacher(out_port=0, timeout=1.5) as teacher:
        runner = Runner(lambda: teacher.serve(reader, times=2))
        student = Student(timeout=20)
        student.register_teacher(in_address=teacher.address)
        assert len(list(student.get_knowledge_generator(25)())) == 2
        student.close(resume=True)  # it means to come back: no goodbye
        with pytest.raises(TeacherError, match=r"no student connected .* for 1\.5 s"):
            runner.join(20)


def _one_batch_then_busy(release: threading.Event):
    def reader():
        yield {"x": np.arange(10).reshape(-1, 1)}
        release.wait(60)  # the teacher is busy with its next batch
        yield {"x": np.arange(10, 20).reshape(-1, 1)}

    return reader


@pytest.mark.timeout(40)  # far below the student's timeout: waiting it out fails the test
@pytest.mark.parametrize("how", ["the generator is closed", "the student is closed"])
def test_a_training_loop_that_stops_mid_round_does_not_wait_for_the_teacher(how) -> None:
    release = threading.Event()
    with Teacher(out_port=0, timeout=20) as teacher:
        runner = Runner(lambda: teacher.serve(_one_batch_then_busy(release)))
        student = Student(timeout=300)
        try:
            student.register_teacher(in_address=teacher.address)
            gen = student.get_knowledge_generator(10)()
            assert next(gen)["x"].ravel().tolist() == list(range(10))
            if how == "the generator is closed":
                gen.close()  # `break` out of the loop: the next batch is not waited for
                assert student.stats()["batches"] == 1
                with pytest.raises(StopIteration):
                    next(gen)
            else:
                student.close()
                with pytest.raises(ClosedError, match="this Student was closed"):
                    next(gen)
        finally:
            student.close()
            release.set()
        with pytest.raises(TeacherError, match=r"group 'default' left"):
            runner.join(20)


@pytest.mark.timeout(40)  # far below the student's timeout: waiting it out fails the test
def test_a_query_loop_that_stops_does_not_wait_for_the_answer_in_flight() -> None:
    release = threading.Event()
    calls = []

    def program(x):  # the second query keeps the teacher busy
        calls.append(len(x))
        if len(calls) > 1:
            release.wait(60)
        return {"y": x * 2}

    queries = [{"x": np.arange(i, i + 10).reshape(-1, 1)} for i in range(0, 50, 10)]
    with Teacher(out_port=0, timeout=20) as teacher:
        runner = Runner(
            lambda: teacher.start_knowledge_service(
                feed_list=["x"], schema={"y": "y"}, program=program, reader_config=None
            )
        )
        try:
            with Student(timeout=300) as student:
                student.register_teacher(in_address=teacher.address)
                gen = student.get_knowledge_generator(10, queries=queries)()
                assert next(gen)["y"].ravel().tolist() == list(range(0, 20, 2))
                gen.close()  # the answer to the next query is not waited for
        finally:
            release.set()
        runner.join(20)  # the student said goodbye: the teacher's service returns


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_when_a_student_closes_the_teacher_has_read_its_goodbye(transport) -> None:
    # The student reads on after its goodbye until the teacher closes the connection. Closing
    # at once could reset the connection with answers still unread, and a teacher whose send
    # failed on it before it read the goodbye would wait for the student to come back.
    queries = [{"x": np.full((1, 1), i)} for i in range(4)]
    with Teacher(out_port=0, timeout=20) as teacher:
        runner = Runner(
            lambda: teacher.start_knowledge_service(
                feed_list=["x"], schema={"y": "x"}, program=lambda x: {"x": x}, reader_config=None
            )
        )
        student = Student(timeout=20, transport=transport)
        student.register_teacher(in_address=teacher.address)
        assert len(list(student.get_knowledge_generator(1, queries=queries)())) == 4
        assert teacher._server is not None and teacher._server.status()["students"]
        student.close()
        assert not teacher._server.status().get("students")  # gone, and told so
        runner.join(20)
