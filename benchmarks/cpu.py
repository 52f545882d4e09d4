"""Where the CPU goes, thread by thread, on the online paths of ``online.py``.

Runs methods of ``benchmarks/online.py`` (the sender in a child process, the receiver here),
and over a steady-state window (``--window`` seconds, after ``--warmup`` seconds from the
first batch) reads each thread's user and system CPU time of both processes (and of their
children) from ``/proc/<pid>/task/<tid>/stat``. It prints the µs of CPU per batch of every
thread, by its Python name, of each process and of both together, with the batches/s in the
window and how many of the machine's CPUs that kept busy. This is how ``docs/design.md``
accounts for a batch's time; it explains ratios, the ratios themselves are ``online.py``'s.

Linux only (``/proc``). One run per method: the figures move from run to run on a shared
machine, so compare methods in the same invocation.

    python benchmarks/cpu.py --methods raw,service,service-shm --sizes "1 MiB"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import NAMES_DIR, PROBES, table

import online

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Clock ticks per second of ``/proc``'s CPU times."""

Threads = dict[tuple[int, int], tuple[int, int]]
"""``(pid, tid) -> (user ticks, system ticks)``."""


@dataclass(frozen=True)
class Window:
    """Two snapshots of a run's threads and the batches received between them."""

    before: Threads
    after: Threads
    batches: int
    seconds: float

    def cpu_seconds(self) -> float:
        """CPU time all the threads used in the window, seconds."""
        ticks = sum(u + s - sum(self.before.get(k, (0, 0))) for k, (u, s) in self.after.items())
        return ticks / TICK


def family(pid: int) -> list[int]:
    """``pid`` and its descendants now (read from ``/proc/<pid>/task/*/children``)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    return found


def snapshot(pids: list[int]) -> Threads:
    """Each live thread's CPU ticks so far, for the processes ``pids``."""
    out: Threads = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # it exited
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
            out[(pid, int(tid))] = (int(fields[11]), int(fields[12]))  # utime, stime
    return out


class Probe:
    """Called by a receiver after each batch: snapshots at the window's two ends."""

    def __init__(self, warmup: float, window: float) -> None:
        self.warmup, self.window = warmup, window
        self._first = self._t0 = 0.0
        self._n0 = 0
        self._before: Threads | None = None
        self.result: Window | None = None
        self.names: dict[int, str] = {}  # this process's threads at the window's end

    def __call__(self, batches: int) -> None:
        if self.result is not None:
            return
        now = time.perf_counter()
        if not self._first:
            self._first = now
        elif self._before is None and now - self._first >= self.warmup:
            self._before, self._t0, self._n0 = snapshot(family(os.getpid())), now, batches
        elif self._before is not None and now - self._t0 >= self.window:
            after = snapshot(family(os.getpid()))
            self.result = Window(self._before, after, batches - self._n0, now - self._t0)
            self.names = {t.native_id or 0: t.name for t in threading.enumerate()}


def read_names(folder: str) -> tuple[dict[int, str], set[int]]:
    """Thread names by native id, as the spawned children wrote them into ``folder``, and
    the pids of those children."""
    names: dict[int, str] = {}
    pids: set[int] = set()
    for path in Path(folder).glob("*.json"):
        names |= {int(k): v for k, v in json.loads(path.read_text()).items()}
        pids.add(int(path.stem))
    return names, pids


def rows(
    w: Window, names: Mapping[int, str], senders: set[int], me: int | None = None
) -> list[list[str]]:
    """The table's rows: µs of CPU per batch of each thread (those of 0.5 µs or more), then
    of each process, then of all together.

    Args:
        w: the window.
        names: thread names by native id (a thread not in it shows its id).
        senders: pids of the processes that wrote their names (the sender); the receiver is
            ``me`` (default: this process), any other process is shown by its pid.
    """
    me = os.getpid() if me is None else me

    def label(pid: int) -> str:
        return "receiver" if pid == me else "sender" if pid in senders else f"pid {pid}"

    def cells(user: float, system: float) -> list[str]:
        return [f"{user:.1f}", f"{system:.1f}", f"{user + system:.1f}"]

    per_us = 1e6 / TICK / max(w.batches, 1)
    threads: dict[str, list[tuple[str, float, float]]] = {}
    for (pid, tid), (user, system) in sorted(w.after.items()):
        u0, s0 = w.before.get((pid, tid), (0, 0))
        name = names.get(tid, f"thread {tid}").split(" (")[0]  # peers' addresses left out
        threads.setdefault(label(pid), []).append(
            (name, (user - u0) * per_us, (system - s0) * per_us)
        )
    out: list[list[str]] = []
    total_u = total_s = 0.0
    for proc in sorted(threads, key=lambda p: (p != "sender", p != "receiver", p)):
        u = sum(t[1] for t in threads[proc])
        s = sum(t[2] for t in threads[proc])
        total_u, total_s = total_u + u, total_s + s
        if u + s < 0.5:
            continue  # a helper process that did nothing in the window
        out += [[proc, n, *cells(tu, ts)] for n, tu, ts in threads[proc] if tu + ts >= 0.5]
        out.append([proc, "all threads", *cells(u, s)])
    out.append(["both", "all processes", *cells(total_u, total_s)])
    return out


def measure(method: str, size: str, warmup: float, window: float) -> str:
    """One run of ``method`` with ``size`` batches; its table."""
    probe = Probe(warmup, window)
    with tempfile.TemporaryDirectory() as folder:
        os.environ[NAMES_DIR] = folder
        PROBES.append(probe)
        try:
            online.run_method(method, online.SIZES[size], warmup + window + 1.0)
            names, senders = read_names(folder)
        finally:
            PROBES.remove(probe)
            del os.environ[NAMES_DIR]
    w = probe.result
    if w is None:
        raise RuntimeError(
            f"{method}: the stream ended before the window of {warmup:g} + {window:g} s was "
            "over; the method's sender stopped early (see its output above)"
        )
    body = rows(w, names | probe.names, senders)
    busy = w.cpu_seconds() / w.seconds
    head = (
        f"{size}, {method}: {w.batches / w.seconds:,.0f} batches/s over {w.seconds:.1f} s "
        f"({w.batches:,} batches), {busy:.2f} of {os.cpu_count()} CPUs busy; "
        "µs of CPU per batch"
    )
    return head + "\n" + table(["process", "thread", "user", "system", "total"], body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="raw,service,service-shm", help="online methods")
    parser.add_argument(
        "--sizes", default="1 MiB", help=f"comma-separated: {', '.join(online.SIZES)}"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=3.0, help="seconds measured (default 3)")
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        sys.exit("cpu.py reads per-thread CPU times from /proc: Linux only")
    methods, sizes = args.methods.split(","), args.sizes.split(",")
    for what, given, known in (("method", methods, online.METHODS), ("size", sizes, online.SIZES)):
        if unknown := [g for g in given if g not in known]:
            sys.exit(f"unknown {what} {unknown[0]!r}: expected one of {', '.join(known)}")
    for name in methods:
        print(f"  {name:<12} {online.DESCRIPTIONS[name]}")
    for size in sizes:
        for method in methods:
            print(measure(method, size, args.warmup, args.window), end="\n\n")


if __name__ == "__main__":
    main()
