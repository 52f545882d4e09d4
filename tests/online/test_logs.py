"""Lifecycle log lines: one per event on each side, in a real kill-and-restart run; one
WARNING per refused connection; ``PANTHEON_LOG=json`` lines from a teacher process."""

from __future__ import annotations

import json
import logging
import re
import signal

import numpy as np
import pytest

from pantheon import AuthenticationError, ConfigError, Student, Teacher, TeacherError
from pantheon._logs import install_from_env
from tests.helpers import Runner


def json_records(stderr: str) -> list[dict[str, str]]:
    """The JSON log records of a process's stderr (every pantheon line is one)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def count(messages: list[str], pattern: str) -> int:
    return sum(1 for m in messages if re.search(pattern, m))


def test_a_kill_and_restart_run_logs_each_lifecycle_event_once(teacher_proc, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pantheon")
    env = {"PANTHEON_LOG": "json"}
    flags = ["--samples", "600", "--batch", "10", "--delay", "0.005"]
    first = teacher_proc(*flags, env=env)
    address = first.address()
    port = address.rsplit(":", 1)[1]
    restarted = None
    with Student(timeout=60, transport="tcp") as student:
        student.register_teacher(in_address=address)
        xs = []
        for i, batch in enumerate(student.get_knowledge_generator(batch_size=50)()):
            xs.append(batch["x"].ravel())
            if i == 3:
                first.kill(signal.SIGKILL)
                first.finish()
                restarted = teacher_proc("--port", port, *flags, env=env)
                restarted.address()
        assert np.array_equal(np.concatenate(xs), np.arange(600))
    assert restarted is not None and restarted.finish() == 0
    student_lines = [r.getMessage() for r in caplog.records if r.name == "pantheon"]
    name = re.escape(f"teacher 0 ({address})")
    for pattern in (
        rf"^registered {name}$",
        rf"^{name}: connected \(knowledge over TCP\)$",
        r"^student 'default' rank 0: round 0 started$",
        rf"^{name}: .*(lost the connection|the teacher closed the connection).*; reconnecting$",
        rf"^{name}: reconnected after \d+\.\d s$",
        r"^student 'default' rank 0: round 0 finished \(600 samples of this rank\)$",
    ):
        assert count(student_lines, pattern) == 1, (pattern, student_lines)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "reconnecting" in warnings[0].getMessage()
    killed = [r["message"] for r in json_records(first.stderr())]
    again = [r["message"] for r in json_records(restarted.stderr())]
    peer = r"student 'default' rank 0 \(127\.0\.0\.1:\d+\)"
    for lines, patterns in (
        (
            killed,
            [
                rf"^teacher listening on 127\.0\.0\.1:{port}$",
                rf"^{peer} connected and authenticated \(knowledge over TCP\)$",
                rf"^{peer} started round 0$",
            ],
        ),
        (
            again,
            [
                rf"^teacher listening on 127\.0\.0\.1:{port}$",
                rf"^{peer} connected and authenticated \(knowledge over TCP\)$",
                rf"^{peer} resumed round 0 at sample [1-9]\d*$",
                rf"^{peer} finished round 0$",
            ],
        ),
    ):
        for pattern in patterns:
            assert count(lines, pattern) == 1, (pattern, lines)
    assert count(again, "started round") == 0  # the restarted teacher only resumed
    for line in killed + again + student_lines:  # an address is printed once per line
        assert len(re.findall(r"127\.0\.0\.1:\d+", line)) <= 1, line


def test_a_refused_connection_is_one_warning(caplog) -> None:
    caplog.set_level(logging.INFO, logger="pantheon")
    with Teacher(out_port=0, timeout=30, token="right") as teacher:
        runner = Runner(lambda: teacher.serve(lambda: iter([{"x": np.arange(5)[:, None]}])))
        bad = Student(timeout=5, token="wrong")
        bad.register_teacher(in_address=teacher.address)
        with pytest.raises(AuthenticationError):
            bad.start()
        bad.close()
        with Student(timeout=30, token="right") as good:
            good.register_teacher(in_address=teacher.address)
            assert len(list(good.get_knowledge_generator(5)())) == 1
        runner.join(30)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("refused a connection from 127.0.0.1:")


def slow_reader():
    for start in range(0, 400, 10):
        yield {"x": np.arange(start, start + 10)[:, None]}


def test_a_replaced_student_and_a_goodbye_are_one_line_each(caplog) -> None:
    caplog.set_level(logging.INFO, logger="pantheon")
    with Teacher(out_port=0, timeout=30) as teacher:
        runner = Runner(lambda: teacher.serve(slow_reader, times=2))
        old = Student(timeout=30)
        old.register_teacher(in_address=teacher.address)
        next(iter(old.get_knowledge_generator(10)()))
        with Student(timeout=30) as new:  # the same group and rank: a restarted process
            new.register_teacher(in_address=teacher.address)
            assert len(list(new.get_knowledge_generator(100)())) == 4
        with pytest.raises(TeacherError, match="said goodbye before the last round"):
            runner.join(30)
        old.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "pantheon"]
    peer = r"student 'default' rank 0 \(127\.0\.0\.1:\d+\)"
    for pattern in (
        rf"^{peer} replaces {peer}$",
        rf"^{peer} is gone: replaced by a newer student of the same rank$",
        rf"^{peer} is gone: the student said goodbye$",
        rf"^{peer} finished round 0$",
    ):
        assert count(lines, pattern) == 1, (pattern, lines)
    assert count(lines, rf"^{peer} started round 0$") == 2


def test_pantheon_log_json_gives_one_object_per_line(teacher_proc) -> None:
    proc = teacher_proc("--samples", "20", env={"PANTHEON_LOG": "json"})
    with Student(timeout=30) as student:
        student.register_teacher(in_address=proc.address())
        assert len(list(student.get_knowledge_generator(10)())) == 2
    assert proc.finish() == 0
    records = json_records(proc.stderr())
    assert records, "the teacher logged nothing"
    for record in records:
        assert set(record) >= {"time", "level", "logger", "message", "process", "thread"}
        assert record["logger"] == "pantheon" and record["level"] in ("INFO", "WARNING")
        assert record["time"].endswith("+00:00")


def test_pantheon_log_values_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"PANTHEON_LOG='loud': expected 'json'"):
        install_from_env({"PANTHEON_LOG": "loud"})
    assert install_from_env({}) is None
    logger = logging.getLogger("pantheon")
    level, propagate = logger.level, logger.propagate
    try:
        handler = install_from_env({"PANTHEON_LOG": "text"})
        assert handler is not None and handler in logger.handlers
        assert install_from_env({"PANTHEON_LOG": "text"}) is handler  # installed once
        assert logger.level == logging.INFO and logger.propagate is False
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_an_acknowledgement_told_again_is_not_logged_again(caplog) -> None:
    from pantheon._online.messages import Hello, RoundDone, Subscribe
    from pantheon._online.peer import Peer, log_round
    from pantheon._online.teacher_machine import TeacherMachine
    from pantheon._wire import Heartbeat, inproc_pair

    conn, other = inproc_pair()
    hello = Hello("client-1", "student", "default", 0, 1)
    peer = Peer(0, conn, hello, on_message=print, on_close=print, heartbeat=Heartbeat())
    caplog.set_level(logging.INFO, logger="pantheon")
    machine, acks = TeacherMachine(times=2), set()
    for event in (Subscribe(1, 0, 0, 8), RoundDone(0), RoundDone(0), Subscribe(2, 2, 0, 8)):
        log_round(peer, event, machine, acks)
    assert [r.getMessage() for r in caplog.records] == [
        f"{peer.name} started round 0",
        f"{peer.name} finished round 0",
    ]  # round 2 of a teacher of 2 rounds is refused, not started
    conn.close()
    other.close()
