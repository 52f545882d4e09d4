"""A soak: a student reads round after round while its teacher is killed (SIGKILL) and
restarted every ``--kill-every`` seconds, for ``--seconds`` seconds; the RSS, threads and
open file descriptors of both processes are sampled from ``/proc`` twice a second.

Run it as ``python tests/faults/soak.py --seconds 180 --kill-every 20`` (``make soak``); the
fault suite runs it for ``PANTHEON_SOAK_SECONDS`` (20 s by default). It prints one JSON line,
the summary, and exits 1 if a bound was passed or a sample was lost or duplicated.

The bounds, checked after a warm-up (the first kill period, at most a quarter of the run):

* the student's RSS grows by at most ``RSS_BOUND`` bytes over its warm-up maximum, its
  threads and descriptors by at most ``COUNT_BOUND`` each;
* each teacher process, after its own first ``TEACHER_WARMUP`` seconds, the same.

``python tests/faults/soak.py student --address A`` is the student process: it checks every
round's ids (``0 .. samples-1``, each once, in order) and prints ``ROUND r`` after each.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(HERE.parent.parent))

from tests.helpers import TESTS, Proc  # noqa: E402

RSS_BOUND = 32 << 20
"""Bytes of RSS a process may grow by after its warm-up."""
COUNT_BOUND = 3
"""Threads, and descriptors, a process may gain after its warm-up (a reconnection in flight)."""
TEACHER_WARMUP = 2.0
"""Seconds of each teacher's life before its baseline is taken."""
SAMPLES = 1000
"""Samples per round."""


def proc_stats(pid: int) -> dict[str, int] | None:
    """``{"rss": bytes, "threads": n, "fds": n}`` of a live process, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a zombie
        return None
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "threads": int(fields["Threads"]),
        "fds": fds,
    }


def growth(samples: list[dict[str, int]], warm: int) -> dict[str, int]:
    """How far the maxima after the first ``warm`` samples exceed the maxima of those."""
    before, after = samples[:warm], samples[warm:]
    if not before or not after:
        return {"rss": 0, "threads": 0, "fds": 0}
    return {k: max(s[k] for s in after) - max(s[k] for s in before) for k in before[0]}


def over_bounds(g: dict[str, int]) -> list[str]:
    """What of a growth passes the bounds, in words."""
    out = []
    if g["rss"] > RSS_BOUND:
        out.append(f"RSS grew by {g['rss'] / 2**20:.1f} MiB (bound {RSS_BOUND >> 20} MiB)")
    for k in ("threads", "fds"):
        if g[k] > COUNT_BOUND:
            out.append(f"{k} grew by {g[k]} (bound {COUNT_BOUND})")
    return out


def run(
    seconds: float,
    kill_every: float,
    spawn: Callable[[list[str]], Proc] = Proc,
    transport: str = "auto",
) -> dict:
    """The soak; returns its summary (``problems`` lists what went wrong, empty if nothing).
    ``transport`` is the student's (``auto``: shared memory with this same-host teacher)."""
    teacher_flags = ["--samples", str(SAMPLES), "--batch", "10", "--delay", "0.004"]
    teacher_flags += ["--width", "16", "--times", "1000000", "--timeout", "60"]
    teacher = spawn([str(TESTS / "teacher_proc.py"), *teacher_flags])
    address = teacher.address()
    port = address.rsplit(":", 1)[1]
    student = spawn(
        [str(HERE / "soak.py"), "student", "--address", address, "--transport", transport]
    )
    student.wait_line("READY", 60)
    started = time.monotonic()
    next_kill = started + kill_every
    warmup = min(kill_every, seconds / 4)
    student_samples: list[dict[str, int]] = []
    student_warm = 0
    lives: list[dict[str, Any]] = [{"born": started, "samples": [], "warm": 0}]
    kills = 0
    problems: list[str] = []
    try:
        while (now := time.monotonic()) < started + seconds:
            if student.popen.poll() is not None:
                problems.append(f"the student exited: {student.stderr()[-2000:]}")
                break
            if now >= next_kill:
                teacher.kill(signal.SIGKILL)
                teacher.finish()
                kills += 1
                teacher = spawn([str(TESTS / "teacher_proc.py"), "--port", port, *teacher_flags])
                teacher.address()
                lives.append({"born": time.monotonic(), "samples": [], "warm": 0})
                next_kill = time.monotonic() + kill_every
            s = proc_stats(student.popen.pid)
            t = proc_stats(teacher.popen.pid)
            if s is not None:
                student_samples.append(s)
                if now - started < warmup:
                    student_warm = len(student_samples)
            life = lives[-1]
            if t is not None:
                life["samples"].append(t)
                if now - life["born"] < TEACHER_WARMUP:
                    life["warm"] = len(life["samples"])
            time.sleep(0.5)
    finally:
        rounds = sum(ln.startswith("ROUND ") for ln in student.lines)
        for proc in (teacher, student):
            proc.kill(signal.SIGKILL)
            proc.finish()
    errors = [ln for ln in student.lines if ln.startswith("ERROR")]
    problems += errors
    g_student = growth(student_samples, student_warm)
    problems += [f"student: {p}" for p in over_bounds(g_student)]
    g_teachers = [growth(life["samples"], life["warm"]) for life in lives]
    for i, g in enumerate(g_teachers):
        problems += [f"teacher life {i}: {p}" for p in over_bounds(g)]
    if rounds < 2:
        problems.append(f"the student finished only {rounds} rounds in {seconds:g} s")
    first = student_samples[0] if student_samples else {}
    return {
        "seconds": seconds,
        "kill_every": kill_every,
        "transport": transport,
        "kills": kills,
        "rounds": rounds,
        "student_first": first,
        "student_last": student_samples[-1] if student_samples else {},
        "student_growth": g_student,
        "teacher_growth": g_teachers,
        "bounds": {"rss": RSS_BOUND, "threads": COUNT_BOUND, "fds": COUNT_BOUND},
        "problems": problems,
    }


def student_main(address: str, transport: str) -> int:
    """The student process: rounds until killed, every id checked."""
    import numpy as np

    from pantheon import Student

    with Student(timeout=60, transport=transport) as student:
        student.register_teacher(in_address=address)
        student.start()
        print("READY", flush=True)
        gen = student.get_knowledge_generator(batch_size=32)
        while True:
            rnd = student.state_dict()["round"]
            expected = 0
            for batch in gen():
                ids = batch["x"].ravel()
                if not np.array_equal(ids, np.arange(expected, expected + len(ids))):
                    print(f"ERROR round {rnd}: got ids {ids[:4].tolist()}... at {expected}")
                    return 1
                expected += len(ids)
            if expected != SAMPLES:
                print(f"ERROR round {rnd}: {expected} samples, expected {SAMPLES}", flush=True)
                return 1
            print(f"ROUND {rnd}", flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "student":
        p = argparse.ArgumentParser()
        p.add_argument("role")
        p.add_argument("--address", required=True)
        p.add_argument("--transport", default="auto")
        a = p.parse_args()
        return student_main(a.address, a.transport)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--kill-every", type=float, default=20.0)
    p.add_argument("--transport", choices=["auto", "tcp", "shm"], default="auto")
    args = p.parse_args()
    summary = run(args.seconds, args.kill_every, transport=args.transport)
    print(json.dumps(summary))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
