"""Helpers shared by the tests: threads with results, child processes read line by line,
and short forms of the service's factories."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pantheon._service import ServiceSpec, make_query_handler, make_round_factory
from pantheon._util import Deadline

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class Runner:
    """Run a function in a thread; keep its result or exception for the test to check."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 30) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


class Proc:
    """A child process whose stdout lines are collected by a reader thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float = 60.0) -> str:
        """The first stdout line starting with ``prefix``; fails if the process ends first."""

        def found() -> str | None:
            return next((ln for ln in self.lines if ln.startswith(prefix)), None)

        with self._cond:
            ok = self._cond.wait_for(
                lambda: found() is not None or self.popen.poll() is not None, timeout=timeout
            )
            line = found()
        if line is None:
            err = (
                self.popen.stderr.read()
                if self.popen.poll() is not None and self.popen.stderr
                else ""
            )
            raise AssertionError(
                f"no line {prefix!r} (ok={ok}); stdout={self.lines} stderr={err[-3000:]}"
            )
        return line

    def address(self, timeout: float = 60.0) -> str:
        return self.wait_line("READY ", timeout).split()[1]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise

    def stderr(self) -> str:
        if self.popen.poll() is None:
            return ""
        assert self.popen.stderr is not None
        return self.popen.stderr.read()


def load_script(path: Path, name: str) -> ModuleType:
    """Import the script at ``path`` (a benchmark, an example) as module ``name``, registered
    in ``sys.modules`` (dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_script(path: Path, *args: str, timeout: float = 120) -> list[str]:
    """Run the script at ``path`` with ``args`` in a new interpreter; its stdout's lines
    (fails the test, with the script's stderr, unless it exits with 0)."""
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` (a state of another process or thread, with nothing to wait on)
    every 20 ms until it is true; False if ``timeout`` s passed first."""
    deadline = Deadline(timeout)
    while not predicate():
        if deadline.expired:
            return False
        time.sleep(0.02)
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for programs that take no port 0 (e.g. the seed's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def round_factory(
    feed_list: Any,
    schema: Any,
    program: Any,
    reader_config: Any,
    exe: Any = None,
    buf_size: int = 10,
) -> Any:
    """``make_round_factory`` of a :class:`ServiceSpec` made of these arguments."""
    return make_round_factory(ServiceSpec(feed_list, schema, program, reader_config, exe, buf_size))


def query_handler(feed_list: Any, schema: Any, program: Any, exe: Any = None) -> Any:
    """``make_query_handler`` of a :class:`ServiceSpec` made of these arguments."""
    return make_query_handler(ServiceSpec(feed_list, schema, program, None, exe))
