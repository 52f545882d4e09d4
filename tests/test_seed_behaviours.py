"""What a seed (PaddleSlim Pantheon) program relies on: sets in messages, a teacher it never
closes, its informative prints as INFO log lines, and an online teacher serving several
rounds to one seed student run after another."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import weakref

import numpy as np
import pytest

from pantheon import KnowledgeFile, KnowledgeWriter, Student, Teacher
from tests.helpers import ROOT, Runner

UNCLOSED = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pantheon import Teacher

    teacher = Teacher(out_path=sys.argv[1])  # as the seed: start(), dump(), and no close()
    teacher.start()
    for start in range(0, 100, 10):
        teacher.dump({"x": np.arange(start, start + 10).reshape(-1, 1)})
    """
)


def test_a_teacher_never_closed_leaves_a_complete_file(tmp_path, caplog):
    path = tmp_path / "seed.dat"
    proc = subprocess.run(
        [sys.executable, "-c", UNCLOSED, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    with caplog.at_level(logging.WARNING, logger="pantheon"), KnowledgeFile(path) as kf:
        assert kf.truncated is None and kf.num_samples == 100
    assert not [r for r in caplog.records if "cut short" in r.getMessage()]
    with Student() as student:
        student.register_teacher(in_path=path)
        student.start()
        xs = np.concatenate([b["x"].ravel() for b in student.get_knowledge_generator(32)()])
    assert np.array_equal(xs, np.arange(100))


def test_an_unclosed_writer_is_finished_when_collected_and_not_kept_alive(tmp_path):
    path = tmp_path / "w.arrow"
    writer = KnowledgeWriter(path)
    writer.write({"x": np.arange(6).reshape(-1, 1)})
    ref = weakref.ref(writer)
    del writer
    gc.collect()
    assert ref() is None  # the exit-time finalizer holds the open file, not the writer
    with KnowledgeFile(path) as kf:
        assert kf.truncated is None and kf.num_samples == 6


def test_a_closed_writer_is_not_finished_twice(tmp_path):
    path = tmp_path / "w.arrow"
    with KnowledgeWriter(path) as writer:
        writer.write({"x": np.arange(3).reshape(-1, 1)})
    size = path.stat().st_size
    del writer
    gc.collect()
    assert path.stat().st_size == size


def test_sets_and_frozensets_as_messages():
    teacher = Teacher(out_port=0, timeout=30)

    def serve():
        teacher.start(timeout=30)
        teacher.send({3, 5})  # the seed's toy sends these
        teacher.send({1, 2, 3})
        teacher.send({"ids": frozenset({1, 2}), "pairs": {(1, "a"), (2, "b")}})
        return teacher.recv(timeout=30)

    runner = Runner(serve)
    try:
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address)
            student.start()
            assert student.recv(0) == {3, 5}
            assert student.recv(0) == {1, 2, 3}
            got = student.recv(0)
            assert got == {"ids": frozenset({1, 2}), "pairs": {(1, "a"), (2, "b")}}
            assert type(got["ids"]) is frozenset and type(got["pairs"]) is set
            student.send({frozenset({"done"})})
            assert runner.join(30) == {frozenset({"done"})}
    finally:
        teacher.close()


def test_the_seed_prints_are_info_lines(tmp_path, caplog):
    paths = []
    for n, offset in enumerate((-1, 1)):
        paths.append(tmp_path / f"t{n}.arrow")
        with Teacher(out_path=paths[-1]) as teacher:
            x = np.arange(10).reshape(-1, 1)
            teacher.dump({f"2x{offset:+d}": 2 * x + offset, "result": 2 * x + offset})
    with caplog.at_level(logging.INFO, logger="pantheon"), Student({"result": "sum"}) as student:
        for path in paths:
            student.register_teacher(in_path=path)
        student.start()
        student.get_knowledge_desc()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"registered teacher 0 ({paths[0]})" in lines
    assert f"registered teacher 1 ({paths[1]})" in lines
    assert "knowledge merging strategy: {'result': 'sum'}" in lines
    merged = [line for line in lines if line.startswith("knowledge description after merging: ")]
    assert merged and "'2x-1'" in merged[0] and "'2x+1'" in merged[0]


def test_times_counts_full_passes_of_students_run_one_after_another():
    """The seed's student reads one round per run: a teacher serving two rounds serves one to
    each of two student processes, then returns."""
    teacher = Teacher(out_port=0, timeout=30)
    done = threading.Event()

    def serve():
        teacher.serve(
            lambda: ({"x": np.arange(i, i + 5).reshape(-1, 1)} for i in range(0, 20, 5)), 2
        )
        done.set()

    runner = Runner(serve)
    try:
        for _ in range(2):
            assert not done.is_set()
            student = Student(timeout=30)  # a fresh student, as a new process is
            student.register_teacher(in_address=teacher.address)
            student.start()
            xs = np.concatenate([b["x"].ravel() for b in student.get_knowledge_generator(8)()])
            assert np.array_equal(xs, np.arange(20))
            del student  # the seed's process ends without a goodbye: the teacher waits
        runner.join(30)
        assert done.is_set()
    finally:
        teacher.close()


@pytest.mark.parametrize("value", [{1, 2j}, {"k": {object()}}])
def test_sets_of_unsupported_items_are_refused_before_sending(value):
    from pantheon import ConfigError
    from pantheon._wire import encode_value

    with pytest.raises(ConfigError, match="an item of value"):
        encode_value(value)
