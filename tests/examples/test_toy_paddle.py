"""The seed's own toy programs (examples/toy/paddle: PaddleSlim's scripts, ported from
paddle.fluid only) with Paddle teachers, in offline, online and hybrid modes.

The seed's scripts take fixed ports (``--out_port 0`` is refused by their own check), so the
online tests pick free ports first.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("paddle")

from tests.helpers import ROOT, Proc, free_port

pytestmark = [pytest.mark.paddle, pytest.mark.timeout(300)]

TOY = ROOT / "examples" / "toy" / "paddle"
SAMPLE = re.compile(
    r"^\{'x': array\(\[(-?\d+)\]\), '2x-1': array\(\[(-?\d+)\]\), "
    r"'result': array\(\[(-?\d+)\]\), '2x\+1': array\(\[(-?\d+)\]\)\}$"
)
MESSAGES = [
    "greetings from teacher1",
    "{'x': 1, 'y': 2}",
    "{3, 5}",
    "greetings from teacher2",
    "[1]",
    "{1, 2, 3}",
]


def _teacher(spawn, n: int, flags: str) -> Proc:
    return spawn([str(TOY / f"run_teacher{n}.py"), *flags.split()])


def _student(spawn, flags: str) -> Proc:
    return spawn([str(TOY / "run_student.py"), *flags.split()])


def _finish(proc: Proc, timeout: float = 240) -> None:
    code = proc.finish(timeout)
    assert code == 0, f"exit {code}; stdout {proc.lines[-5:]}; stderr {proc.stderr()[-3000:]}"


def _check_samples(student: Proc, messages: bool = False) -> None:
    """The seed student's output: the messages (if asked), then its 1000 samples in order,
    merged with "sum" (result == 4x), one line per sample."""
    _finish(student)
    lines = student.lines
    if messages:
        assert lines[:6] == MESSAGES
        lines = lines[6:]
    got = [SAMPLE.match(line) for line in lines]
    assert all(got), [line for line, m in zip(lines, got, strict=True) if not m][:3]
    rows = [tuple(int(v) for v in m.groups()) for m in got if m]
    assert rows == [(x, 2 * x - 1, 4 * x, 2 * x + 1) for x in range(1000)]


@pytest.mark.parametrize(
    ("gen1", "gen2"),
    [
        ("sample_generator", "sample_list_generator"),
        ("batch_generator", "sample_generator"),
        ("sample_list_generator", "batch_generator"),
    ],
)
def test_offline(spawn, tmp_path, gen1: str, gen2: str) -> None:
    t1 = _teacher(spawn, 1, f"--out_path {tmp_path}/t1.dat --generator_type {gen1}")
    t2 = _teacher(spawn, 2, f"--out_path {tmp_path}/t2.dat --generator_type {gen2} --batch_size 50")
    _finish(t1)
    _finish(t2)
    for t in (t1, t2):
        assert "cut short" not in t.stderr()
    student = _student(spawn, f"--in_path0 {tmp_path}/t1.dat --in_path1 {tmp_path}/t2.dat")
    _check_samples(student)
    assert "cut short" not in student.stderr()  # the seed never closes its teachers


def test_online_teachers_first_with_send_recv(spawn) -> None:
    p1, p2 = free_port(), free_port()
    t1 = _teacher(spawn, 1, f"--out_port {p1} --test_send_recv true")
    t2 = _teacher(
        spawn, 2, f"--out_port {p2} --test_send_recv true --generator_type sample_generator"
    )
    student = _student(
        spawn, f"--in_address0 127.0.0.1:{p1} --in_address1 127.0.0.1:{p2} --test_send_recv true"
    )
    _check_samples(student, messages=True)
    for t in (t1, t2):
        _finish(t)
        assert t.lines == ["recved message from student!"]


def test_online_student_first_and_serving_times(spawn) -> None:
    """Teachers serving two rounds, started after the student; the seed's student reads one
    round per run, so it runs twice."""
    p1, p2 = free_port(), free_port()
    addresses = f"--in_address0 127.0.0.1:{p1} --in_address1 127.0.0.1:{p2}"
    first = _student(spawn, addresses)
    t1 = _teacher(spawn, 1, f"--out_port {p1} --serving_times 2")
    t2 = _teacher(
        spawn, 2, f"--out_port {p2} --serving_times 2 --generator_type sample_list_generator"
    )
    _check_samples(first)
    _check_samples(_student(spawn, addresses))
    _finish(t1)
    _finish(t2)


def test_hybrid(spawn, tmp_path) -> None:
    t1 = _teacher(spawn, 1, f"--out_path {tmp_path}/t1.dat --batch_size 100")
    _finish(t1)
    port = free_port()
    t2 = _teacher(spawn, 2, f"--out_port {port}")
    _check_samples(_student(spawn, f"--in_path0 {tmp_path}/t1.dat --in_address1 127.0.0.1:{port}"))
    _finish(t2)
