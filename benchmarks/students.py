"""One teacher, many students: shared predictions, ranks, query batching, a slow consumer.

Every figure comes through the public API: a teacher's ``start_knowledge_service`` in this
process (its program counts its calls), students in spawned child processes.

(1) **Predictions per round** with 1, 2 and 4 groups (fan-out, ``groups=G``): the program's
    calls per round stay the reader's batch count, whatever the number of groups.
(2) **Ranks**: one student reading a whole round vs a group of 4 ranks each reading its
    shard: the group's samples per second, and the ratio.
(3) **Query batching**: 4 students each sending small queries to a program with a fixed
    cost per call (``--call-ms``, standing in for a GPU kernel launch): ``max_batch=None``
    (a call per query) vs ``max_batch=64`` (queries of several students merged); throughput
    ratio and the program's mean batch size.
(4) **The slowest consumer sets the pace**: two groups sharing one round's predictions, one
    of them slow (``--slow-ms`` per batch): the fast group's time for the round, alone and
    beside the slow one.

Runs are repeated ``--repeats`` times, interleaved; medians are printed.

    python benchmarks/students.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import finish, median, spawn, table


class Counting:
    """A teacher program ``2 * x`` that counts its calls and the samples it saw; with
    ``call_ms`` it also waits that long per call (a fixed per-call cost)."""

    def __init__(self, call_ms: float = 0.0) -> None:
        self.calls = 0
        self.sizes: list[int] = []
        self.call_s = call_ms / 1000
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls += 1
            self.sizes.append(len(x))
        if self.call_s:
            time.sleep(self.call_s)
        return {"y": 2 * x}


def _reader(samples: int, batch: int) -> Any:
    def batches() -> Any:
        for start in range(0, samples, batch):
            yield (np.arange(start, min(start + batch, samples)).reshape(-1, 1).astype(np.float32),)

    return batches


def _student(
    address: str, group: str, rank: int, world: int, batch: int, slow_s: float, out: Any
) -> None:
    from pantheon import Student

    with Student(timeout=120, group=group, rank=rank, world_size=world) as student:
        student.register_teacher(in_address=address)
        n, first = 0, 0.0
        for b in student.get_knowledge_generator(batch)():
            if not n:
                first = time.time()  # wall clock: compared across processes
            n += len(b["x"])
            if slow_s:
                time.sleep(slow_s)
        out.send((n, first, time.time()))


def _asker(address: str, group: str, queries: int, size: int, out: Any) -> None:
    from pantheon import Student

    feeds = [{"x": np.full((size, 1), q, np.float32)} for q in range(queries)]
    with Student(timeout=120, group=group) as student:
        student.register_teacher(in_address=address)
        n, first = 0, 0.0
        for b in student.get_knowledge_generator(size, queries=feeds)():
            if not n:
                first = time.time()  # wall clock: compared across processes
            n += len(b["x"])
        out.send((n, first, time.time()))


def _serve(program: Any, reader: Any, groups: int, **service: Any) -> tuple[Any, str]:
    from pantheon import Teacher

    teacher = Teacher(out_port=0, timeout=120)
    thread = threading.Thread(
        target=teacher.start_knowledge_service,
        kwargs={
            "feed_list": ["x"],
            "schema": {"x": "x", "y": "y"},
            "program": program,
            "reader_config": None if reader is None else {"batch_generator": reader},
            "groups": groups,
            **service,
        },
        daemon=True,
    )
    thread.start()
    return (teacher, thread), teacher.address


def _children(jobs: list[tuple[Any, tuple[Any, ...]]]) -> list[tuple[int, float, float]]:
    import multiprocessing as mp

    pipes, procs = [], []
    for target, args in jobs:
        recv, send = mp.get_context("spawn").Pipe(duplex=False)
        procs.append(spawn(target, *args, send))
        pipes.append(recv)
    results = [p.recv() for p in pipes]
    for proc in procs:
        finish(proc, 120)
    return results


def _join(handle: Any) -> None:
    teacher, thread = handle
    thread.join(120)
    teacher.close()


def fan_out(groups: int, samples: int, batch: int) -> int:
    """Program calls for one round served to ``groups`` groups."""
    program = Counting()
    handle, address = _serve(program, _reader(samples, batch), groups)
    _children([(_student, (address, f"g{g}", 0, 1, 64, 0.0)) for g in range(groups)])
    _join(handle)
    return program.calls


def ranks(world: int, samples: int, batch: int) -> float:
    """The group's samples per second over one round with ``world`` ranks."""
    handle, address = _serve(Counting(), _reader(samples, batch), 1)
    results = _children([(_student, (address, "job", r, world, 64, 0.0)) for r in range(world)])
    _join(handle)
    return _rate(results)


def _rate(results: list[tuple[int, float, float]]) -> float:
    """Samples per second of processes together: from the first one's first batch to the
    last one's last."""
    span = max(last for _, _, last in results) - min(first for _, first, _ in results)
    return sum(n for n, _, _ in results) / max(span, 1e-9)


def queries(
    max_batch: int | None, students: int, n: int, size: int, call_ms: float
) -> tuple[float, float]:
    """Samples per second and the program's mean batch size, ``students`` asking at once."""
    program = Counting(call_ms)
    kwargs: dict[str, Any] = {"max_batch": max_batch, "max_delay": 0.002}
    handle, address = _serve(program, None, students, **kwargs)
    results = _children([(_asker, (address, f"s{s}", n, size)) for s in range(students)])
    _join(handle)
    return _rate(results), float(np.mean(program.sizes))


def pace(slow_ms: float, samples: int, batch: int) -> tuple[float, float]:
    """The fast group's round time alone, and beside a slow group sharing the round."""
    handle, address = _serve(Counting(), _reader(samples, batch), 1)
    ((_, first, last),) = _children([(_student, (address, "fast", 0, 1, 64, 0.0))])
    alone = last - first
    _join(handle)
    handle, address = _serve(Counting(), _reader(samples, batch), 2)
    results = _children(
        [
            (_student, (address, "fast", 0, 1, 64, 0.0)),
            (_student, (address, "slow", 0, 1, 64, slow_ms / 1000)),
        ]
    )
    _join(handle)
    return alone, results[0][2] - results[0][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=20_000, help="samples per round")
    ap.add_argument("--batch", type=int, default=100, help="reader batch size")
    ap.add_argument("--queries", type=int, default=200, help="queries per student")
    ap.add_argument("--query-size", type=int, default=4, help="samples per query")
    ap.add_argument("--call-ms", type=float, default=2.0, help="fixed cost per program call")
    ap.add_argument("--slow-ms", type=float, default=2.0, help="the slow group's step time")
    ap.add_argument("--quick", action="store_true", help="a small, fast run (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.samples, args.queries = 1, 2_000, 20
    reps = range(args.repeats)

    calls = {g: median([fan_out(g, args.samples, args.batch) for _ in reps]) for g in (1, 2, 4)}
    print("(1) program calls per round (the reader has", args.samples // args.batch, "batches)")
    print(table(["groups", "calls"], [[str(g), f"{c:.0f}"] for g, c in calls.items()]))

    one, four = [], []
    for _ in reps:
        one.append(ranks(1, args.samples, args.batch))
        four.append(ranks(4, args.samples, args.batch))
    print("\n(2) one round, samples per second of the whole group")
    rows = [["1 rank", f"{median(one):,.0f}", "1.00"]]
    rows.append(["4 ranks", f"{median(four):,.0f}", f"{median(four) / median(one):.2f}"])
    print(table(["students", "samples/s", "ratio"], rows))

    alone, merged = [], []
    for _ in reps:
        alone.append(queries(None, 4, args.queries, args.query_size, args.call_ms))
        merged.append(queries(64, 4, args.queries, args.query_size, args.call_ms))
    a = median([r for r, _ in alone])
    m = median([r for r, _ in merged])
    print(
        f"\n(3) 4 students querying, {args.query_size} samples a query, {args.call_ms:g} ms per call"
    )
    rows = [
        ["max_batch=None", f"{a:,.0f}", f"{median([s for _, s in alone]):.1f}", "1.00"],
        ["max_batch=64", f"{m:,.0f}", f"{median([s for _, s in merged]):.1f}", f"{m / a:.2f}"],
    ]
    print(table(["teacher", "samples/s", "mean batch", "gain"], rows))

    timings = [pace(args.slow_ms, args.samples // 4, args.batch) for _ in reps]
    al, bs = median([t for t, _ in timings]), median([t for _, t in timings])
    print(
        f"\n(4) a fast group's round, alone and beside a group {args.slow_ms:g} ms per batch slower"
    )
    print(
        table(["fast group", "seconds"], [["alone", f"{al:.2f}"], ["beside the slow", f"{bs:.2f}"]])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
