"""``benchmarks/cpu.py``: its per-thread table from given snapshots, its window over a real
stream of batches, and a short real run (figures checked for form, never for speed)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script, run_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu.py"

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="reads per-thread CPU times from /proc"
)


@pytest.fixture(scope="module")
def cpu() -> ModuleType:
    return load_script(SCRIPT, "bench_cpu")  # (it puts benchmarks/ on sys.path)


def test_rows_give_cpu_per_batch_by_thread_process_and_in_all(cpu):
    tick_us = 1e6 / cpu.TICK
    # 10 batches; ticks (user, system) before and after the window
    before = {(1, 11): (0, 0), (1, 12): (5, 5), (2, 21): (0, 0), (3, 31): (7, 7)}
    after = {
        (1, 11): (10, 20),  # the receiver's reader
        (1, 12): (5, 5),  # idle in the window: left out
        (1, 13): (2, 0),  # a thread started during the window counts from zero
        (2, 21): (30, 40),  # the sender's one thread
        (3, 31): (7, 7),  # a helper process that did nothing: left out
    }
    window = cpu.Window(before, after, batches=10, seconds=1.0)
    names = {11: "pantheon-read teacher 0 (127.0.0.1:5000)", 13: "pantheon-assembler", 21: "send"}
    got = cpu.rows(window, names, senders={2}, me=1)
    per = tick_us / 10

    def cells(u, s):
        return [f"{u * per:.1f}", f"{s * per:.1f}", f"{(u + s) * per:.1f}"]

    assert got == [
        ["sender", "send", *cells(30, 40)],
        ["sender", "all threads", *cells(30, 40)],
        ["receiver", "pantheon-read teacher 0", *cells(10, 20)],  # the address cut off
        ["receiver", "pantheon-assembler", *cells(2, 0)],
        ["receiver", "all threads", *cells(12, 20)],
        ["both", "all processes", *cells(42, 60)],
    ]


def test_a_thread_without_a_name_shows_its_id(cpu):
    window = cpu.Window({}, {(9, 99): (10, 0)}, batches=1, seconds=1.0)
    assert cpu.rows(window, {}, senders=set(), me=1)[0][:2] == ["pid 9", "thread 99"]


def test_the_probe_measures_between_its_warm_up_and_the_end_of_its_window(cpu):
    probe = cpu.Probe(warmup=0.0, window=0.0)
    busy = threading.Event()

    def spin() -> None:  # a thread of this process that uses CPU in the window
        while not busy.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin, name="spinner")
    worker.start()
    try:
        probe(1)  # the first batch: the clock starts
        assert probe.result is None
        probe(5)  # warm-up over: the window opens at 5 batches
        assert probe.result is None
        for _ in range(50_000):  # /proc counts CPU in ticks (10 ms at 100 Hz): use some
            sum(range(100))
        probe(12)  # the window ends at 12 batches: 7 in it
        probe(20)  # after the window: ignored
    finally:
        busy.set()
        worker.join()
    w = probe.result
    assert w is not None and w.batches == 7 and w.seconds > 0
    me = os.getpid()
    assert {pid for pid, _ in w.after} >= {me}
    mine = [k for k in w.after if k[0] == me]
    used = sum(sum(w.after[k]) - sum(w.before.get(k, (0, 0))) for k in mine)
    assert used > 0  # the spinner and this thread ran in the window
    assert "spinner" in probe.names.values()


def test_a_short_real_run_names_the_service_threads():
    args = ["--methods", "service", "--sizes", "small", "--warmup", "0.2", "--window", "0.5"]
    lines = run_script(SCRIPT, *args)
    assert lines[0].split()[0] == "service"  # the method's description
    head = next(line for line in lines if line.startswith("small, service: "))
    assert "batches/s over" in head and "CPUs busy; µs of CPU per batch" in head
    table = [line.split() for line in lines[lines.index(head) + 3 :] if line.strip()]
    threads = {(r[0], " ".join(r[1:-3])) for r in table}
    assert ("sender", "all threads") in threads and ("receiver", "all threads") in threads
    assert ("receiver", "pantheon-read teacher 0") in threads  # this process's names
    assert any(p == "sender" and t.startswith("pantheon-") for p, t in threads)  # the child's
    assert table[-1][:3] == ["both", "all", "processes"]
    for row in table:
        user, system, total = map(float, row[-3:])
        assert total == pytest.approx(user + system, abs=0.11)


def test_an_unknown_method_is_refused_with_the_known_ones(cpu, capsys):
    with pytest.raises(SystemExit, match=r"unknown method 'tcp': expected one of raw, "):
        cpu.main(["--methods", "tcp"])
