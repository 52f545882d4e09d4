"""Shared fixtures: teacher processes started on port 0 and waited for on their READY line."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.helpers import TESTS, Proc


@pytest.fixture
def spawn() -> Iterator:
    """Start child processes; every one is killed at the end of the test."""
    procs: list[Proc] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGCONT)
            proc.popen.kill()
        proc.popen.wait(10)
        for stream in (proc.popen.stdout, proc.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def teacher_proc(spawn):
    """Start ``tests/teacher_proc.py`` with flags; returns the Proc."""

    def start(*flags: str, env: dict[str, str] | None = None) -> Proc:
        return spawn([str(TESTS / "teacher_proc.py"), *flags], env)

    return start
