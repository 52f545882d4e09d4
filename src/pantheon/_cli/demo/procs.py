"""Teacher processes of the demo: start, wait for the reported address, wait for the exit.

A :class:`TeacherProcess` runs a command (normally :func:`teacher_command`, i.e.
``python -m pantheon._cli.demo.teacher_proc ...``) with its stderr going to a log file and its stdout
read by a thread, so that the parent can wait for the ``PANTHEON_DEMO_ADDRESS host:port`` line
with a timeout instead of polling. Every failure raises :class:`~pantheon.TeacherError` with the
tail of the process's log.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ..._errors import PantheonTimeoutError, TeacherError

__all__ = ["ADDRESS_PREFIX", "TeacherProcess", "teacher_command"]

# Not imported from teacher_proc: ``python -m pantheon._cli.demo.teacher_proc`` must find that
# module not yet imported (runpy warns otherwise), and the demo package imports this one.
ADDRESS_PREFIX = "PANTHEON_DEMO_ADDRESS "
"""Start of the stdout line on which an online teacher reports its ``host:port``."""

_EOF = None


def teacher_command(
    kind: str,
    weights: str | os.PathLike[str],
    *,
    transfer_size: int,
    transfer_seed: int,
    batch_size: int,
    out_path: str | os.PathLike[str] | None = None,
    online_times: int | None = None,
    start_timeout: float = 120.0,
) -> list[str]:
    """The command line of a demo teacher process (offline with ``out_path``, else online).

    The offline teacher also passes the inputs (``image``, ``label``) through as knowledge; the
    online one serves ``logits`` only, so the two share one key, merged by the student.
    """
    cmd = [
        sys.executable, "-m", "pantheon._cli.demo.teacher_proc",
        "--kind", kind, "--weights", os.fspath(weights),
        "--transfer-size", str(transfer_size), "--transfer-seed", str(transfer_seed),
        "--batch-size", str(batch_size),
    ]  # fmt: skip
    if out_path is not None:
        return [*cmd, "--out-path", os.fspath(out_path), "--pass-inputs"]
    times = 1 if online_times is None else online_times
    return [*cmd, "--online", "--times", str(times), "--start-timeout", str(start_timeout)]


def _child_env() -> dict[str, str]:
    """This environment, with the folder holding this ``pantheon`` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not old else os.pathsep.join([root, old])
    return env


class TeacherProcess:
    """One child process; stderr goes to ``log_path``, stdout lines are collected by a thread.

    Args:
        argv: the command to run.
        name: how errors call it (e.g. ``"online teacher (mlp)"``).
        log_path: file that receives the process's stderr (created or replaced).
    """

    def __init__(self, argv: Sequence[str], *, name: str, log_path: str | os.PathLike[str]):
        self.name = name
        self.log_path = Path(log_path)
        self._lines: queue.Queue[str | None] = queue.Queue()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_child_env(),
                text=True,
            )
        self._reader = threading.Thread(target=self._read, name=f"{name} stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        with self._proc.stdout:
            for line in self._proc.stdout:
                self._lines.put(line.rstrip("\n"))
        self._lines.put(_EOF)

    @property
    def pid(self) -> int:
        """The process id."""
        return self._proc.pid

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the process's stderr log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def _failure(self, what: str) -> TeacherError:
        return TeacherError(
            f"{self.name} (pid {self.pid}) {what}; last lines of its log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def wait_address(self, timeout: float) -> str:
        """Wait until the process prints ``PANTHEON_DEMO_ADDRESS host:port``; return ``host:port``.

        Raises:
            TeacherError: the process ended without reporting an address.
            PantheonTimeoutError: no address within ``timeout`` seconds (the process is killed).
        """
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.kill()
                raise PantheonTimeoutError(
                    f"{self.name} reported no address within {timeout:g} s (expected a line "
                    f"{ADDRESS_PREFIX.strip()!r} on its stdout); log {self.log_path}:\n"
                    f"{self.log_tail()}"
                ) from None
            if line is _EOF:
                self._proc.wait()
                raise self._failure(
                    f"exited with status {self._proc.returncode} before reporting its address"
                )
            if line.startswith(ADDRESS_PREFIX):
                return line[len(ADDRESS_PREFIX) :].strip()

    def wait_exit(self, timeout: float) -> None:
        """Wait for the process to end with status 0.

        Raises:
            TeacherError: it ended with another status.
            PantheonTimeoutError: it was still running after ``timeout`` seconds (it is killed).
        """
        try:
            status = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PantheonTimeoutError(
                f"{self.name} (pid {self.pid}) was still running after {timeout:g} s and was "
                f"killed; log {self.log_path}:\n{self.log_tail()}"
            ) from None
        finally:
            self._reader.join(timeout=5.0)
        if status != 0:
            raise self._failure(f"exited with status {status}")

    def kill(self) -> None:
        """Kill the process if it still runs and reap it (idempotent)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reader.join(timeout=5.0)
