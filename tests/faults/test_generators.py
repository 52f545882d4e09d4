"""Knowledge generators: one live at a time, nothing after close() (finding 9), and no ready
batch held back for one that is not (finding 10). Real teachers on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pantheon import ClosedError, ConfigError, PantheonError, Student, Teacher
from tests.faults.common import LiveTeacher, reader
from tests.helpers import Runner

RELEASE_WAIT = 30.0  # how long a blocked reader waits for the test before it gives up


def _student(address: str, **kw: Any) -> Student:
    student = Student(**{"timeout": 30, "transport": "tcp", **kw})
    student.register_teacher(in_address=address)
    student.start()
    return student


def test_finding_9_two_generators_at_once_never_hand_a_sample_twice() -> None:
    """Finding 9: two generators used at once handed out samples 10..80 twice and
    ``state_dict()["position"]`` said 180 of a 100-sample round. Now the newer generator
    takes over from the last batch handed out and the older one ends with a ConfigError."""
    live = LiveTeacher(reader(100, 10))
    try:
        with _student(live.address) as student:
            gen = student.get_knowledge_generator(batch_size=10)
            first = gen()
            seen = [next(first)["x"].ravel()]
            second = gen()  # the newest generator is the live one
            seen.append(next(second)["x"].ravel())
            with pytest.raises(ConfigError, match="replaced by a newer one"):
                next(first)
            seen.extend(b["x"].ravel() for b in second)
            assert np.array_equal(np.concatenate(seen), np.arange(100))
            state = student.state_dict()
            assert state["round"] == 1 and state["sample_in_round"] == 0
        live.join()
    finally:
        live.close()


def test_finding_9_a_second_generator_mid_round_gives_no_stale_batches() -> None:
    """Finding 9: a second generator started while the first was unfinished gave 18 batches
    for a 10-batch round, 8 of them stale (read ahead by the first). Now it gives exactly the
    batches the first had not handed out."""
    live = LiveTeacher(reader(100, 10))
    try:
        with _student(live.address) as student:
            gen = student.get_knowledge_generator(batch_size=10)
            first = gen()
            seen = [next(first)["x"].ravel(), next(first)["x"].ravel()]
            rest = [b["x"].ravel() for b in gen()]
            assert len(seen) + len(rest) == 10
            assert np.array_equal(np.concatenate(seen + rest), np.arange(100))
            with pytest.raises(ConfigError):
                next(first)
        live.join()
    finally:
        live.close()


def test_finding_9_iterating_after_close_is_a_closed_error() -> None:
    """Finding 9: iterating after close() yielded 8 read-ahead batches, then a timeout. Now
    the next batch after close() is a ClosedError, as is a new generator."""
    live = LiveTeacher(reader(100, 10))
    try:
        student = _student(live.address)
        gen = student.get_knowledge_generator(batch_size=10)
        it = gen()
        next(it)
        student.close()
        with pytest.raises(ClosedError):
            next(it)
        with pytest.raises(ClosedError):
            next(gen())
        with pytest.raises(ClosedError):
            student.get_knowledge_generator(batch_size=10)
    finally:
        live.close()


def test_finding_9_generators_from_two_threads_hand_each_sample_once() -> None:
    """Finding 9, from two threads: whichever generator runs, no sample is handed out twice;
    the replaced one ends with a ConfigError (never a duplicate, never a hang)."""
    live = LiveTeacher(reader(200, 10))
    try:
        with _student(live.address) as student:
            gen = student.get_knowledge_generator(batch_size=10)
            got: list[list[int]] = [[], []]
            errors: list[BaseException] = []

            def consume(i: int) -> None:
                try:
                    for batch in gen():
                        got[i].extend(batch["x"].ravel().tolist())
                except ConfigError as exc:
                    errors.append(exc)

            runners = [Runner(lambda i=i: consume(i)) for i in (0, 1)]
            for r in runners:
                r.join(60)
            everything = sorted(got[0] + got[1])
            assert len(everything) == len(set(everything)), "a sample was handed out twice"
            assert set(everything) <= set(range(200))
            while student.state_dict()["round"] == 0:  # whatever is left, once
                everything += [int(v) for b in gen() for v in b["x"].ravel()]
            assert sorted(everything) == list(range(200))
        live.join()
    finally:
        live.close()


def _blocking_reader(release: threading.Event, released: list[bool]) -> Any:
    """Batch 0 at once, then blocks until the test releases it (or RELEASE_WAIT passes)."""

    def gen() -> Iterator[dict[str, np.ndarray]]:
        yield {"x": np.arange(0, 8, dtype=np.int64).reshape(-1, 1)}
        released.append(release.wait(RELEASE_WAIT))
        yield {"x": np.arange(8, 16, dtype=np.int64).reshape(-1, 1)}

    return gen


def test_finding_10_a_ready_batch_does_not_wait_for_the_next() -> None:
    """Finding 10: batch 0 (fast) waited for batch 1 (5 s) before either arrived. Now the
    student gets batch 0 while the reader is still blocked on batch 1: the reader is only
    released after the student got it (a held-back batch would need the reader's own
    RELEASE_WAIT to pass, which the test detects)."""
    release, released = threading.Event(), []
    teacher = Teacher(out_port=0, timeout=30)
    serving = Runner(lambda: teacher.serve(_blocking_reader(release, released)))
    try:
        with _student(teacher.address, timeout=RELEASE_WAIT * 2) as student:
            it = student.get_knowledge_generator(batch_size=8)()
            first = next(it)
            release.set()
            assert np.array_equal(first["x"].ravel(), np.arange(8))
            assert np.array_equal(next(it)["x"].ravel(), np.arange(8, 16))
            assert list(it) == []
        serving.join(30)
        assert released == [True], "batch 0 reached the student only after the reader gave up"
    finally:
        release.set()
        teacher.close()


def test_finding_10_the_description_does_not_wait_for_a_blocked_reader() -> None:
    """Finding 10: a reader that yields batch 0 and then blocks never delivered the
    description. Now ``get_knowledge_desc()`` returns while the reader is blocked."""
    release, released = threading.Event(), []
    teacher = Teacher(out_port=0, timeout=30)
    serving = Runner(lambda: teacher.serve(_blocking_reader(release, released)))
    try:
        with _student(teacher.address, timeout=RELEASE_WAIT * 2) as student:
            desc = student.get_knowledge_desc()
            release.set()
            assert desc == {"x": {"shape": [-1, 1], "dtype": "int64", "lod_level": 0}}
            assert sum(len(b["x"]) for b in student.get_knowledge_generator(batch_size=5)()) == 16
        serving.join(30)
        assert released and all(released), "the description came only after the reader gave up"
    finally:
        release.set()
        teacher.close()


def test_finding_10_a_partial_student_batch_waits_but_a_full_one_does_not() -> None:
    """Finding 10 on the student's re-batching: with student batches of 4 over teacher
    batches of 8, both batches of chunk 0 come while the reader is blocked; the third waits
    for the reader, as it must."""
    release, released = threading.Event(), []
    teacher = Teacher(out_port=0, timeout=30)
    serving = Runner(lambda: teacher.serve(_blocking_reader(release, released)))
    try:
        with _student(teacher.address, timeout=RELEASE_WAIT * 2) as student:
            it = student.get_knowledge_generator(batch_size=4)()
            a, b = next(it), next(it)
            assert not release.is_set() and not released
            release.set()
            rest = list(it)
            xs = np.concatenate([a["x"], b["x"], *(r["x"] for r in rest)]).ravel()
            assert np.array_equal(xs, np.arange(16))
        serving.join(30)
        assert released == [True]
    except PantheonError:
        release.set()
        raise
    finally:
        release.set()
        teacher.close()
