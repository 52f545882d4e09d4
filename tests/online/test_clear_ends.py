"""Round-count mismatches end at once with an error that says so, in both directions.

The timeouts are small (20 s) but far above what a clear end takes: the old behaviour (waiting
out a timeout) fails these tests with a timeout error instead of the expected message.
"""

from __future__ import annotations

import numpy as np
import pytest

from pantheon import Student, Teacher, TeacherError
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
