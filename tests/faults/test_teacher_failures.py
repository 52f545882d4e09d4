"""A teacher whose own reader or program fails tells its students why (finding 6), and a
reader that changes a field mid-stream is the teacher's error, reported, never sent on
(finding 3). Real teachers on 127.0.0.1; the student waits with a long timeout so that a
student that merely times out fails these tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from pantheon import Student, Teacher, TeacherError
from tests.helpers import Runner

STUDENT_TIMEOUT = 60.0  # the student's own timeout: a test that waits this long has failed


def _ids(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.int64).reshape(-1, 1)


def first_batch_raises() -> Iterator[dict[str, Any]]:
    raise OSError("the dataset's disk is gone")
    yield {}  # pragma: no cover


def object_dtype() -> Iterator[dict[str, Any]]:
    yield {"x": np.array([["a"], [None]], dtype=object)}


def shape_changes() -> Iterator[dict[str, Any]]:
    yield {"x": _ids(0, 4)}
    yield {"x": np.arange(8, dtype=np.int64).reshape(-1, 2)}


def key_dropped() -> Iterator[dict[str, Any]]:
    yield {"x": _ids(0, 4), "y": _ids(0, 4)}
    yield {"x": _ids(4, 8)}


def dtype_changes() -> Iterator[dict[str, Any]]:
    yield {"x": _ids(0, 4)}
    yield {"x": _ids(4, 8).astype(np.float32)}


def raises_mid_round() -> Iterator[dict[str, Any]]:
    for start in range(0, 40, 4):
        if start == 20:
            raise RuntimeError("corrupt record 20")
        yield {"x": _ids(start, start + 4)}


READERS: dict[str, tuple[Callable[[], Iterator[dict[str, Any]]], str]] = {
    "first-batch-raises": (first_batch_raises, "the dataset's disk is gone"),
    "object-dtype": (object_dtype, "object"),
    "shape-changes": (shape_changes, "shape"),
    "key-dropped": (key_dropped, "y"),
    "dtype-changes": (dtype_changes, "float32"),
    "raises-mid-round": (raises_mid_round, "corrupt record 20"),
}


def _failing_round(reader: Callable[[], Iterator[dict[str, Any]]]) -> tuple[Any, list, float, Any]:
    """Serve ``reader`` and read a round; returns (the student's error, the batches it got,
    seconds from the start of the round to the error, the teacher's own error)."""
    teacher = Teacher(out_port=0, timeout=30)
    serving = Runner(lambda: teacher.serve(reader))
    got: list[dict[str, np.ndarray]] = []
    try:
        with Student(timeout=STUDENT_TIMEOUT, transport="tcp") as student:
            student.register_teacher(in_address=teacher.address)
            student.start()
            started = time.monotonic()
            with pytest.raises(TeacherError) as info:
                student.get_knowledge_desc()
                for batch in student.get_knowledge_generator(batch_size=4)():
                    got.append(batch)
            took = time.monotonic() - started
        serving.thread.join(30)
        assert not serving.thread.is_alive()
        return info.value, got, took, serving.error
    finally:
        teacher.close()


@pytest.mark.parametrize("name", list(READERS))
def test_finding_6_the_teachers_failure_reaches_the_student_with_its_cause(name: str) -> None:
    """Finding 6: a reader that raises on its first batch, an object-dtype batch, a shape
    change or a dropped key mid-stream ended the teacher at once, while the student waited its
    whole timeout (300 s) and then suggested raising it. Now the teacher sends ERROR naming
    the cause before it goes and the student raises TeacherError with it (far inside its
    timeout: the bound below only tells a wait from a timeout)."""
    reader, cause = READERS[name]
    exc, got, took, teacher_error = _failing_round(reader)
    assert cause in str(exc), exc
    assert "timeout" not in str(exc).lower(), exc
    assert took < STUDENT_TIMEOUT / 4, f"the student waited {took:.1f} s for the failure"
    assert teacher_error is not None and cause in str(teacher_error)
    for batch in got:  # whatever came before the failure is good knowledge
        assert batch["x"].dtype == np.int64 and batch["x"].shape[1:] == (1,)


def test_finding_3_a_reader_turning_float_mid_stream_spoils_no_good_batch() -> None:
    """Finding 3: with a fast reader whose chunks were grouped into one message, an int64 key
    that turned float mid-stream came out float64 in every batch of the round. Now the
    teacher checks each chunk before grouping: the batches before the bad one arrive int64
    and whole, then the student raises the teacher's error naming the key."""

    def reader() -> Iterator[dict[str, Any]]:
        for start in range(0, 400, 4):  # 100 tiny chunks: ready together, sent grouped
            x = _ids(start, start + 4)
            yield {"x": x.astype(np.float64) if start == 200 else x}

    exc, got, _, _ = _failing_round(reader)
    assert "'x'" in str(exc) and "float64" in str(exc), exc
    xs = np.concatenate([b["x"] for b in got]) if got else np.zeros((0, 1), np.int64)
    assert xs.dtype == np.int64
    assert np.array_equal(xs.ravel(), np.arange(len(xs)))
    assert len(xs) <= 200


def test_finding_6_a_failing_program_in_the_knowledge_service_reaches_the_student() -> None:
    """Finding 6 through ``start_knowledge_service``: the program raises on batch 3; the
    student's TeacherError names the program's error."""

    def program(x: np.ndarray) -> dict[str, np.ndarray]:
        if int(x[0, 0]) == 30:
            raise ValueError("the model cannot take sample 30")
        return {"y": x * 2}

    def batches() -> Iterator[tuple[np.ndarray]]:
        for start in range(0, 100, 10):
            yield (_ids(start, start + 10),)

    teacher = Teacher(out_port=0, timeout=30)
    serving = Runner(
        lambda: teacher.start_knowledge_service(
            feed_list=["x"],
            schema={"y": "y"},
            program=program,
            reader_config={"batch_generator": batches},
        )
    )
    try:
        with Student(timeout=STUDENT_TIMEOUT, transport="tcp") as student:
            student.register_teacher(in_address=teacher.address)
            student.start()
            started = time.monotonic()
            with pytest.raises(TeacherError, match="cannot take sample 30"):
                for _ in student.get_knowledge_generator(batch_size=8)():
                    pass
            assert time.monotonic() - started < STUDENT_TIMEOUT / 4
        serving.thread.join(30)
        assert isinstance(serving.error, Exception)
    finally:
        teacher.close()


def test_finding_6_a_student_arriving_after_the_failure_is_told_why() -> None:
    """Finding 6: a student that connects after the teacher's reader failed gets the failure
    at once, not a wait for a teacher that will never serve."""
    teacher = Teacher(out_port=0, timeout=30)
    serving = Runner(lambda: teacher.serve(first_batch_raises))
    try:
        with Student(timeout=STUDENT_TIMEOUT, transport="tcp") as first:
            first.register_teacher(in_address=teacher.address)
            first.start()
            with pytest.raises(TeacherError):
                first.get_knowledge_desc()
        serving.thread.join(30)
        with Student(timeout=STUDENT_TIMEOUT, transport="tcp") as late:
            late.register_teacher(in_address=teacher.address)
            late.start()
            started = time.monotonic()
            with pytest.raises(TeacherError, match="disk is gone"):
                late.get_knowledge_desc()
            assert time.monotonic() - started < STUDENT_TIMEOUT / 4
    finally:
        teacher.close()
