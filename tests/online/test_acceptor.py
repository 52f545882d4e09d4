"""The teacher's acceptor, with real sockets on 127.0.0.1."""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest

from pantheon import Student, Teacher
from pantheon._online import acceptor

pytestmark = pytest.mark.timeout(60)


def test_a_handshake_thread_that_cannot_start_refuses_one_client_not_all(monkeypatch) -> None:
    """A process at its thread limit: the accept loop died on the ``RuntimeError`` of a
    handshake thread that could not start, and the teacher accepted no one after."""
    failed: list[str] = []

    class Thread(threading.Thread):
        def start(self) -> None:
            if self.name == "pantheon-handshake" and not failed:
                failed.append(self.name)
                raise RuntimeError("can't start new thread")
            super().start()

    shim: Any = types.SimpleNamespace(Thread=Thread, Lock=threading.Lock)
    monkeypatch.setattr(acceptor, "threading", shim)
    with Teacher(out_port=0, timeout=30) as teacher, Student(timeout=30) as student:
        student.register_teacher(in_address=teacher.address)
        student.start(timeout=20)  # its first connection is refused; it tries again
        teacher.start(timeout=20)
        assert failed and teacher.stats()["students"] == 1
