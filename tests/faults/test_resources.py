"""Bounded resources under a flood (finding 11): the user-message inboxes of both sides, the
handshakes in progress, the accept loop at file-descriptor exhaustion, and the refusal log.
Real sockets on 127.0.0.1 and, for the descriptor limit, a real teacher process. (The zstd
decompression cap of the same finding is ``tests/fuzz/test_crafted_files.py::
test_finding_11_a_small_zstd_file_cannot_decompress_to_a_gibibyte``.)"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pantheon import PantheonTimeoutError, ProtocolError, Student
from pantheon._wire import MsgType, encode_value, session
from tests.faults.common import FakeTeacher, LiveTeacher, closed_by_peer, hostile_student, send_desc
from tests.faults.test_hostile_peer import read_round
from tests.helpers import TESTS

MIB = 1 << 20


def _user(conn: Any, payload: Any) -> None:
    value, frames = encode_value(payload)
    conn.send(MsgType.USER, {"value": value}, frames)


def _flood(conn: Any, count: int, payload: Any) -> int:
    """Send ``count`` USER messages until the peer closes; returns how many went out."""
    for sent in range(count):
        try:
            _user(conn, payload)
        except Exception:
            return sent
    return count


def _handshakes() -> int:
    return sum(t.name == "pantheon-handshake" for t in threading.enumerate())


def test_finding_11_a_flood_of_user_messages_to_a_student_is_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 11: the student's USER inbox was unbounded (390 MB under a flood). Now at most
    USER_INBOX_BYTES (here lowered to 8 MiB) wait: the flooding teacher's connection is closed
    and, once the waiting messages are taken, ``recv`` raises the ProtocolError."""
    monkeypatch.setattr(session, "USER_INBOX_BYTES", 8 * MIB)
    sent: list[int] = []
    flooded = threading.Event()

    def script(conn: Any) -> None:
        send_desc(conn)
        sent.append(_flood(conn, 64, np.zeros(MIB, np.uint8)))
        closed_by_peer(conn, timeout=30)
        flooded.set()  # the student cut this connection off

    fake = FakeTeacher(script)
    try:
        with Student(timeout=20, transport="tcp") as student:
            student.register_teacher(in_address=fake.address)
            student.start()
            assert flooded.wait(30)  # the training loop calls recv() only now
            assert sent[0] < 64, "the student never cut the flooding teacher off"
            got = 0
            with pytest.raises(ProtocolError, match="at most 1024 messages and 8388608 bytes"):
                while True:
                    student.recv(0, timeout=10)
                    got += 1
            assert 1 <= got <= 8
    finally:
        fake.close()


def test_finding_11_a_flood_of_small_messages_is_bounded_in_count() -> None:
    """Finding 11: 1024 unread messages at most, however small."""

    flooded = threading.Event()

    def script(conn: Any) -> None:
        send_desc(conn)
        _flood(conn, session.USER_INBOX_MESSAGES + 200, 1)
        closed_by_peer(conn, timeout=30)
        flooded.set()  # the student cut this connection off

    fake = FakeTeacher(script)
    try:
        with Student(timeout=20, transport="tcp") as student:
            student.register_teacher(in_address=fake.address)
            student.start()
            assert flooded.wait(30)
            got = 0
            with pytest.raises(ProtocolError, match="1024 messages"):
                while True:
                    student.recv(0, timeout=10)
                    got += 1
            assert got == session.USER_INBOX_MESSAGES
    finally:
        fake.close()


def test_finding_11_a_student_flooding_the_teacher_is_cut_off_and_the_teacher_serves_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 11, teacher side: a student flooding ``Teacher.recv``'s inbox is closed with one
    log line; the messages that fit can still be received and a real student reads the round."""
    monkeypatch.setattr(session, "USER_INBOX_BYTES", 4 * MIB)
    caplog.set_level(logging.INFO, logger="pantheon")
    live = LiveTeacher()
    try:
        conn = hostile_student(live.address)
        _flood(conn, 32, np.ones(MIB, np.uint8))
        closed_by_peer(conn, timeout=30)
        got = 0
        with pytest.raises(PantheonTimeoutError):
            while True:
                assert live.teacher.recv(timeout=1).nbytes == MIB
                got += 1
        assert 1 <= got <= 4
        lines = [r for r in caplog.records if "waiting to be received" in r.getMessage()]
        assert len(lines) == 1
        assert np.array_equal(read_round(live.address), np.arange(100))
        live.join()
    finally:
        live.close()


def test_finding_11_handshakes_in_progress_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    """Finding 11: each unauthenticated connection held a thread and a descriptor for 10 s,
    without limit. Now at most 32 handshakes run at once; more connections are closed at
    once, refusals are logged at most once per kind every 5 s, and once the idle connections
    go a real student is served."""
    caplog.set_level(logging.INFO, logger="pantheon")
    live = LiveTeacher(heartbeat_timeout=60)  # the handshakes wait this long for HELLO
    idle: list[socket.socket] = []
    try:
        before = _handshakes()
        for _ in range(40):
            idle.append(socket.create_connection(tuple(live.address.rsplit(":", 1)), timeout=10))
        # the teacher closes the ones beyond its cap at once: they read EOF
        eof: set[socket.socket] = set()
        deadline = time.monotonic() + 5
        while len(eof) < 8 and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in idle if s not in eof], [], [], 0.2)
            eof.update(s for s in readable if s.recv(1) == b"")
        time.sleep(0.5)  # a ninth close would come as fast as the first eight
        readable, _, _ = select.select([s for s in idle if s not in eof], [], [], 0)
        assert len(eof) == 8 and not readable, (len(eof), len(readable))
        assert _handshakes() - before <= 32
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 30
        while _handshakes() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _handshakes() == before, "handshake threads outlived their connections"
        assert np.array_equal(read_round(live.address), np.arange(100))
        live.join()
        warnings = [r for r in caplog.records if r.getMessage().startswith("refused a connection")]
        assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]
    finally:
        for sock in idle:
            sock.close()
        live.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_finding_11_the_accept_loop_backs_off_when_descriptors_run_out(spawn) -> None:
    """Finding 11: at descriptor exhaustion the accept loop spun (13 CPU-seconds in 15 s).
    A teacher process limited to a few spare descriptors gets more connections than it can
    accept: over the next 3 s it uses well under a CPU-second (a spinning loop uses about 3)
    and logs the failure at most once per 5 s."""
    proc = spawn([str(TESTS / "faults" / "teacher_fds.py"), "--spare", "6"])
    host, port = proc.address().rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(14)]
    try:
        time.sleep(0.5)  # let the accept loop reach EMFILE
        start = _cpu_seconds(proc.popen.pid)
        time.sleep(3.0)  # the measured window
        used = _cpu_seconds(proc.popen.pid) - start
    finally:
        for sock in socks:
            sock.close()
        proc.kill()
        proc.finish()
    err = proc.stderr()
    failures = [ln for ln in err.splitlines() if "accepting connections failed" in ln]
    assert failures, f"the teacher never ran out of descriptors: {err[-2000:]}"
    assert len(failures) <= 2, failures
    assert used < 1.0, f"the accept loop used {used:.2f} CPU-s in 3 s: it spins"
