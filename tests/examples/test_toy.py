"""The seed's toy (examples/toy) in offline, online and hybrid modes, through its real scripts."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT, free_port

TOY = ROOT / "examples" / "toy"
EXPECTED = (
    "round {r}: 1000 samples in 32 batches (31 x 32 + 8), in order: True, result == {f}x: True"
)


def _teacher(spawn, n: int, *flags: str):
    return spawn([str(TOY / f"run_teacher{n}.py"), *flags])


def _student(spawn, *flags: str):
    return spawn([str(TOY / "run_student.py"), *flags])


def _check_student(proc, rounds: int = 1, factor: int = 4) -> None:
    for r in range(rounds):
        proc.wait_line(EXPECTED.format(r=r, f=factor), timeout=90)
    assert proc.finish(90) == 0


@pytest.mark.parametrize(
    ("flags1", "flags2"),
    [
        (["--generator_type", "sample_generator", "--batch_size", "13"], ["--batch_size", "50"]),
        (["--generator_type", "sample_list_generator", "--batch_size", "7", "--workers", "3"], []),
    ],
)
def test_offline(spawn, tmp_path, flags1, flags2):
    t1 = _teacher(spawn, 1, "--out_path", str(tmp_path / "t1.arrow"), *flags1)
    t2 = _teacher(spawn, 2, "--out_path", str(tmp_path / "t2.arrow"), *flags2)
    assert t1.finish(90) == 0 and t2.finish(90) == 0
    student = _student(
        spawn, "--in_path0", str(tmp_path / "t1.arrow"), "--in_path1", str(tmp_path / "t2.arrow")
    )
    student.wait_line(
        "knowledge desc: {'x': {'shape': [-1, 1], 'dtype': 'int64', 'lod_level': 0}, "
        "'2x-1': {'shape': [-1, 1], 'dtype': 'int64', 'lod_level': 0}, "
        "'result': {'shape': [-1, 1], 'dtype': 'int64', 'lod_level': 0}, "
        "'2x+1': {'shape': [-1, 1], 'dtype': 'int64', 'lod_level': 0}}"
    )
    _check_student(student)


def test_online_teachers_first_with_send_recv_and_two_rounds(spawn):
    t1 = _teacher(
        spawn,
        1,
        "--out_port",
        "0",
        "--test_send_recv",
        "true",
        "--serving_times",
        "2",
        "--workers",
        "2",
    )
    t2 = _teacher(
        spawn,
        2,
        "--out_port",
        "0",
        "--test_send_recv",
        "true",
        "--serving_times",
        "2",
        "--generator_type",
        "sample_generator",
        "--batch_size",
        "10",
    )
    a1 = t1.wait_line("teacher listening on ").split()[-1]
    a2 = t2.wait_line("teacher listening on ").split()[-1]
    student = _student(
        spawn,
        "--in_address0",
        a1,
        "--in_address1",
        a2,
        "--test_send_recv",
        "true",
        "--serving_times",
        "2",
        "--merge",
        "mean",
    )
    for t in range(2):
        for i in range(3):
            student.wait_line(f"recv from teacher {t}: {{'from': 'teacher', 'message': {i},")
    _check_student(student, rounds=2, factor=2)
    for t in (t1, t2):
        t.wait_line("recv from student: message from student!")
        assert t.finish(60) == 0


def test_online_student_first(spawn):
    p1, p2 = free_port(), free_port()
    student = _student(
        spawn, "--in_address0", f"127.0.0.1:{p1}", "--in_address1", f"127.0.0.1:{p2}"
    )
    t1 = _teacher(spawn, 1, "--out_port", str(p1))
    t2 = _teacher(spawn, 2, "--out_port", str(p2))
    _check_student(student)
    assert t1.finish(60) == 0 and t2.finish(60) == 0


def test_hybrid(spawn, tmp_path):
    t1 = _teacher(spawn, 1, "--out_path", str(tmp_path / "t1.arrow"), "--batch_size", "100")
    assert t1.finish(90) == 0
    t2 = _teacher(spawn, 2, "--out_port", "0", "--serving_times", "2")
    a2 = t2.wait_line("teacher listening on ").split()[-1]
    student = _student(
        spawn, "--in_path0", str(tmp_path / "t1.arrow"), "--in_address1", a2, "--serving_times", "2"
    )
    _check_student(student, rounds=2)
    assert t2.finish(60) == 0
