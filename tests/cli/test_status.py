"""`pantheon status` against live teachers over real sockets: CliRunner and a subprocess."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from pantheon import Student, Teacher, TeacherError
from pantheon._cli import main
from tests.helpers import Runner


def reader():
    for start in range(0, 1_000_000, 10):  # longer than the teacher computes ahead
        yield {"x": np.arange(start, start + 10).reshape(-1, 1)}


class TwoStudents:
    """A teacher and two students of two groups, each holding its first batch of a round."""

    def __init__(self, token: str | None = None) -> None:
        self.teacher = Teacher(out_port=0, timeout=30, token=token)
        self.served = Runner(lambda: self.teacher.serve(reader, groups=2))
        self.students = [Student(timeout=30, group=g, token=token) for g in ("alpha", "beta")]
        self.iterators: list[Any] = [None, None]

        def first_batch(i: int) -> None:
            s = self.students[i]
            s.register_teacher(in_address=self.teacher.address)
            self.iterators[i] = iter(s.get_knowledge_generator(10)())
            next(self.iterators[i])

        threads = [threading.Thread(target=first_batch, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(it is not None for it in self.iterators)

    def close(self) -> None:
        for s in self.students:
            s.close()
        with pytest.raises(TeacherError, match="said goodbye before the last round"):
            self.served.join(30)  # the students left early: the serve call says so
        self.teacher.close()


def test_status_shows_the_teacher_and_both_students() -> None:
    live = TwoStudents()
    try:
        out = CliRunner().invoke(main, ["status", live.teacher.address])
        assert out.exit_code == 0, out.output
        text = out.output
        assert live.teacher.address in text
        assert "a reader of knowledge batches (Teacher.serve)" in text
        assert "x int64[-1, 1]" in text
        assert "2 student(s) connected" in text
        assert "alpha" in text and "beta" in text
        out = CliRunner().invoke(main, ["status", live.teacher.address, "--json"])
        assert out.exit_code == 0, out.output
        status = json.loads(out.output)
        assert sorted(s["group"] for s in status["students"]) == ["alpha", "beta"]
        for s in status["students"]:
            assert s["round"] == 0 and s["rank"] == 0 and s["position"] >= 10
            assert s["lag"] == status["cursors"][0]["produced"] - s["position"]
        assert status["times"] == 1 and status["mode"] == "rounds"
        assert status["stats"]["samples"] >= 20
        assert status["uptime_seconds"] > 0
    finally:
        live.close()


def test_status_with_a_wrong_token_or_no_teacher_exits_1_saying_why() -> None:
    live = TwoStudents(token="right")
    try:
        out = CliRunner().invoke(main, ["status", live.teacher.address, "--token", "wrong"])
        assert out.exit_code == 1
        assert "token" in out.output.lower()
        out = CliRunner().invoke(main, ["status", live.teacher.address, "--token", "right"])
        assert out.exit_code == 0 and "alpha" in out.output
    finally:
        live.close()
    out = CliRunner().invoke(main, ["status", live.teacher.address, "--timeout", "1"])
    assert out.exit_code == 1 and "Error" in out.output


def test_status_watch_redraws_until_interrupted(spawn) -> None:
    live = TwoStudents()
    try:
        cmd = ["-m", "pantheon._cli.main", "status", live.teacher.address, "--watch"]
        proc = spawn([*cmd, "--interval", "0.2", "--json"])
        proc.wait_line('{"times"')
        with proc._cond:  # one JSON object per answer: wait for a second one
            assert proc._cond.wait_for(lambda: len(proc.lines) >= 2, timeout=30)
        assert all(json.loads(line)["address"] == live.teacher.address for line in proc.lines)
        first = json.loads(proc.lines[0])
        assert sorted(s["group"] for s in first["students"]) == ["alpha", "beta"]
        proc.kill(signal.SIGINT)
        assert proc.finish(30) == 0
        drawn = spawn([*cmd, "--interval", "0.2"])
        drawn.wait_line("teacher ")
        drawn.wait_line("2 student(s) connected")
        drawn.kill(signal.SIGINT)
        assert drawn.finish(30) == 0
        assert any("beta" in line for line in drawn.lines)
    finally:
        live.close()


def double(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": 2 * x}


def test_status_of_an_idle_then_query_teacher_names_its_program() -> None:
    with Teacher(out_port=0, timeout=30) as teacher:
        idle = json.loads(CliRunner().invoke(main, ["status", teacher.address, "--json"]).output)
        assert idle["mode"] == "idle" and idle["desc"] is None and "students" not in idle
        served = Runner(lambda: teacher.start_knowledge_service(["x"], {"y": "y"}, double, None))
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address)
            queries = [{"x": np.arange(8).reshape(-1, 1)}]
            assert len(list(student.get_knowledge_generator(4, queries=queries)())) == 2
            out = CliRunner().invoke(main, ["status", teacher.address])
            assert out.exit_code == 0, out.output
            assert f"{__name__}.double" in out.output
            assert "queries" in out.output and "1 student(s) connected" in out.output
        served.join(30)


def test_an_odd_answer_is_shown_as_plain_text_without_failing() -> None:
    from rich.console import Console

    from pantheon._cli.status_cmd import render_status

    odd = {
        "mode": "rounds",
        "program": "[bold red]not markup[/]",
        "desc": {"logits": {"dtype": "float32", "shape": [-1, 8]}, "bad": 3},
        "codecs": {"logits": {"name": "topk"}},
        "stats": {"samples": "many", "bytes": None},
        "students": [{"group": "[link=x]g[/link]", "credits": "none", "round": [1]}, 7],
        "times": "two",
    }
    console = Console(record=True, width=200)
    console.print(render_status(odd))
    text = console.export_text()
    assert "[bold red]not markup[/]" in text and "[link=x]g[/link]" in text
    assert "logits float32[-1, 8] (topk)" in text and "1 student(s) connected" in text


def test_a_student_whose_byte_window_is_full_is_shown_waiting_on_it() -> None:
    """A student that stops reading with a small byte window: the teacher fills the window,
    not the credits, and the status says so (its window, the bytes in flight, ``window``)."""
    teacher = Teacher(out_port=0, timeout=30)
    served = Runner(lambda: teacher.serve(reader))
    student = Student(timeout=30, window_bytes=400)  # 5 chunks of 10 int64 samples
    try:
        student.register_teacher(in_address=teacher.address)
        it = iter(student.get_knowledge_generator(10)())
        next(it)  # then it stops reading: its read-ahead fills, then the window
        deadline = time.monotonic() + 30
        text = ""
        while True:  # until it settles: the student takes what came until its read-ahead is full
            out = CliRunner().invoke(main, ["status", teacher.address, "--json"])
            assert out.exit_code == 0, out.output
            (st,) = json.loads(out.output)["students"]
            if st["in_flight_bytes"] >= 400:
                text = CliRunner().invoke(main, ["status", teacher.address]).output
            if "window" in text or time.monotonic() > deadline:
                break
            threading.Event().wait(0.05)
        assert st["window"] == 400 and st["in_flight_bytes"] >= 400, st
        assert st["credits"] > 0  # credits left: the window is what holds the teacher back
        assert "window" in text, text
    finally:
        student.close()
        with pytest.raises(TeacherError, match="said goodbye before the last round"):
            served.join(30)
        teacher.close()
