"""Teacher pools on Ray: throughput of 1, 2 and 4 replicas, query and same-order mode.

The teacher sleeps ``--compute-ms`` per batch, standing in for GPU compute (so that scaling
shows on a machine with few cores: sleeping replicas leave the CPUs to the rest). Every
figure goes through the public API: a :class:`pantheon.ray.TeacherPool` on a local Ray
instance, and a student in this process that registers ``ray://NAME``.

* **query mode**: the student sends ``--batches`` query batches of ``--batch`` samples, 8 in
  flight (``Student(read_ahead=8)``), and receives their answers in order; the pool is the
  same one, scaled 1 -> 2 -> 4.
* **same-order mode**: the replicas split a reader of ``--batches`` batches (replica ``j``
  predicts every R-th); the student reads the round in order. One pool per replica count.

* **data plane**: 1 MiB knowledge messages per second, 8 in flight: a Ray actor call
  returning the array (through Ray's object store) vs a pool's answers over Pantheon's wire
  (``--mib-messages`` of each).

Each row shows samples per second, the ratio to one replica, and the *efficiency*: that
ratio divided by R (target >= 0.8: R replicas give >= 0.8 x R times one replica). The
clock starts at the first answer or batch (connecting and the descriptions are left out).

    python benchmarks/ray_pool.py --compute-ms 20 --batches 200
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import table

from pantheon import Student
from pantheon.ray import TeacherPool


class Sleepy:
    """The teacher: ``2 * x`` after sleeping ``ms`` milliseconds per call."""

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        return {"y": 2 * x}


class Service:
    """A pool's factory (picklable): query mode, or a reader of ``batches`` batches."""

    def __init__(self, ms: float, batch: int, batches: int | None) -> None:
        self.ms, self.batch, self.batches = ms, batch, batches

    def __call__(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "feed_list": ["x"],
            "schema": {"y": "y"},
            "program": Sleepy(self.ms),
            "reader_config": None,
        }
        if self.batches is not None:
            batch, batches = self.batch, self.batches

            def reader():
                for i in range(batches):
                    yield (np.arange(i * batch, (i + 1) * batch, dtype=np.float32).reshape(-1, 1),)

            kwargs["reader_config"] = {"batch_generator": reader}
            kwargs["times"] = 1
        return kwargs


def _timed(batches: Any) -> tuple[int, float]:
    """Samples after the first batch, and the seconds they took."""
    it = iter(batches)
    next(it)
    t0 = time.perf_counter()
    n = sum(len(b["y"]) for b in it)
    return n, time.perf_counter() - t0


def query_mode(name: str, batch: int, batches: int) -> float:
    queries = (
        {"x": np.arange(i * batch, (i + 1) * batch, dtype=np.float32).reshape(-1, 1)}
        for i in range(batches)
    )
    with Student(read_ahead=8, timeout=120) as student:
        student.register_teacher(in_address=f"ray://{name}")
        n, seconds = _timed(student.get_knowledge_generator(batch_size=batch, queries=queries)())
    return n / seconds


def same_order(name: str, batch: int) -> float:
    with Student(timeout=120) as student:
        student.register_teacher(in_address=f"ray://{name}")
        n, seconds = _timed(student.get_knowledge_generator(batch_size=batch)())
    return n / seconds


class Big:
    """A Ray actor returning 1 MiB of float32 per call (the data plane's baseline)."""

    def __init__(self) -> None:
        self.value = np.ones((1, 262_144), np.float32)

    def get(self, x: np.ndarray) -> np.ndarray:
        return self.value


def big_program(x: np.ndarray) -> dict[str, np.ndarray]:
    """The pool's teacher for the data plane: 1 MiB of float32 per query of one sample."""
    return {"y": np.ones((len(x), 262_144), np.float32)}


def big_service() -> dict[str, Any]:
    return {"feed_list": ["x"], "schema": {"y": "y"}, "program": big_program, "reader_config": None}


def data_plane(messages: int) -> tuple[float, float]:
    """1 MiB messages per second, 8 in flight: Ray actor calls, then a pool's answers."""
    actor = ray.remote(Big).options(num_cpus=0.25).remote()
    ray.get(actor.get.remote(np.zeros(1)))
    t0 = time.perf_counter()
    pending, done = [], 0
    for _ in range(messages):
        pending.append(actor.get.remote(np.zeros(1)))
        if len(pending) >= 8:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
            done += 1
    ray.get(pending)
    ray_rate = messages / (time.perf_counter() - t0)
    ray.kill(actor)
    queries = ({"x": np.zeros((1, 1), np.float32)} for _ in range(messages + 1))
    with TeacherPool("bench-wire", big_service, num_cpus=0.25), Student(read_ahead=8) as student:
        student.register_teacher(in_address="ray://bench-wire")
        n, seconds = _timed(student.get_knowledge_generator(batch_size=1, queries=queries)())
    return ray_rate, n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-ms", type=float, default=20.0, help="sleep per batch, ms")
    parser.add_argument("--batch", type=int, default=64, help="samples per batch")
    parser.add_argument("--batches", type=int, default=200, help="batches per measurement")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--mib-messages", type=int, default=300, help="data plane: 0 to skip")
    args = parser.parse_args()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    per_actor = {"num_cpus": 0.25}
    rows: dict[str, dict[int, float]] = {"query": {}, "same-order": {}}
    query = Service(args.compute_ms, args.batch, None)
    with TeacherPool("bench-queries", query, replicas=args.replicas[0], **per_actor) as pool:
        for r in args.replicas:
            pool.scale(r)
            rows["query"][r] = query_mode("bench-queries", args.batch, args.batches)
    for r in args.replicas:
        service = Service(args.compute_ms, args.batch, args.batches)
        with TeacherPool(
            f"bench-rounds-{r}", service, replicas=r, split_samples=args.batch, **per_actor
        ):
            rows["same-order"][r] = same_order(f"bench-rounds-{r}", args.batch)
    wire = data_plane(args.mib_messages) if args.mib_messages else None
    ray.shutdown()
    one = {mode: rows[mode][args.replicas[0]] / args.replicas[0] for mode in rows}
    out = []
    for mode, figures in rows.items():
        for r, rate in figures.items():
            ratio = rate / one[mode]
            out.append([mode, str(r), f"{rate:,.0f}", f"{ratio:.2f}", f"{ratio / r:.2f}"])
    print(
        f"teacher: {args.compute_ms:g} ms per batch of {args.batch} samples "
        f"(one replica at most {1000 / args.compute_ms * args.batch:,.0f} samples/s)"
    )
    print(table(["mode", "replicas", "samples/s", "x one", "efficiency (x one / R)"], out))
    if wire is not None:
        print(
            f"data plane, 1 MiB messages per second (8 in flight): Ray actor calls "
            f"{wire[0]:,.0f}, Pantheon's wire {wire[1]:,.0f} ({wire[1] / wire[0]:.1f} x)"
        )


if __name__ == "__main__":
    main()
