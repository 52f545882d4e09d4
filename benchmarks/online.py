"""Online transport throughput: raw TCP, the seed's BaseManager queue, and Pantheon's wire.

A sender in a child process (spawned) streams float32 batches for ``--seconds`` to the
receiver in this process; the receiver times the stream from its first batch to the end
marker. Methods:

``raw``      the reference: an 8-byte length prefix and the bytes over a plain TCP socket,
             received with ``recv_into`` into one preallocated buffer.
``manager``  the seed's transport: a ``multiprocessing.managers.BaseManager`` serving a
             ``queue.Queue`` (maxsize 100) in its own server process, as the seed's teacher
             started it; the sender puts dicts of numpy arrays through a proxy and the
             receiver gets them through another (both pickled by the manager).
``wire``     ``pantheon._wire``: a handshake, then each batch as a chunk (``encode_parts``:
             sample ids + the array as raw frames) in one DATA message, decoded on arrival
             with ``decode_parts``; receive buffers freshly allocated per message.
``wire-pool`` the same, receiving into buffers recycled by ``pantheon._wire.BufferPool``.
``pantheon`` the public API end to end: ``Teacher.serve`` in the child, the student's
             ``get_knowledge_generator(batch_size=...)`` here (credits, re-batching, read-ahead).
``service``  as users run a knowledge service: ``start_knowledge_service`` in the child (a
             reader of batches, no program: inputs passed through), the student here with
             ``transport="tcp"``.
``service-shm`` the same with ``transport="auto"``: on one host, knowledge through the
             student's shared-memory ring.

Methods run interleaved (raw, manager, wire, ..., raw, ...) after a warm-up, ``--repeats``
times; the table shows medians, each method's ratio to raw TCP (``x raw TCP``: the ratio of
the medians; ``paired``: the median of each repeat's ratio to that repeat's raw TCP run, which
moves less on a machine whose speed drifts during the run) and to the seed's transport, then
a PASS or FAIL line per target (``TARGETS``, read on the ratio of the medians; every path users
run at least 10x the seed's). Throughput counts the batch arrays' bytes only
(MB = 10**6 bytes). To add a method, write a receiver ``run_<name>(shape, seconds) -> Result``
and its sender, and add it to ``METHODS``.

    python benchmarks/online.py --repeats 3 --seconds 2
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.managers import BaseManager

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import PROBES, Result, finish, free_port, median, spawn, table

SIZES: dict[str, tuple[int, int]] = {"1 MiB": (256, 1000), "small": (64, 10)}
"""Batch shapes (float32): ~1 MiB batches and small 64x10 batches."""
_LEN = struct.Struct("<Q")
_AUTHKEY = b"pantheon-benchmark"


def _batch(shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


# -- (a) raw TCP ---------------------------------------------------------------------------


def _raw_sender(port: int, shape: tuple[int, int], seconds: float) -> None:
    arr = _batch(shape)
    head = _LEN.pack(arr.nbytes)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            view = [memoryview(head), arr.data.cast("B")]
            while view:  # sendmsg may send part: loop like a real sender
                n = sock.sendmsg(view)
                while view and n >= view[0].nbytes:
                    n -= view[0].nbytes
                    view.pop(0)
                if n:
                    view[0] = view[0][n:]
        sock.sendall(_LEN.pack(0))


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("sender closed early")
        got += n


def run_raw(shape: tuple[int, int], seconds: float) -> Result:
    nbytes = shape[0] * shape[1] * 4
    buf = memoryview(bytearray(nbytes))
    head = memoryview(bytearray(8))
    with socket.create_server(("127.0.0.1", 0)) as server:
        proc = spawn(_raw_sender, server.getsockname()[1], shape, seconds)
        sock, _ = server.accept()
    with sock:
        total = batches = 0
        start = 0.0
        while True:
            _recv_exact(sock, head)
            (n,) = _LEN.unpack(head)
            if n == 0:
                break
            _recv_exact(sock, buf[:n])
            if not batches:
                start = time.perf_counter()
            else:
                total += n
            batches += 1
            for probe in PROBES:  # benchmarks/cpu.py watching
                probe(batches)
        elapsed = time.perf_counter() - start
    finish(proc)
    return Result(total, batches - 1, elapsed)


# -- (b) the seed's BaseManager queue ------------------------------------------------------

_QUEUE: queue.Queue[object] = queue.Queue(maxsize=100)


def _get_queue() -> queue.Queue[object]:
    return _QUEUE


class _QueueManager(BaseManager):
    pass


_QueueManager.register("get_queue", callable=_get_queue)


def _manager_sender(pipe: Pipe, shape: tuple[int, int], seconds: float) -> None:
    manager = _QueueManager(address=("127.0.0.1", 0), authkey=_AUTHKEY)
    manager.start()  # the server process holding the queue, as the seed's teacher did
    try:
        q = manager.get_queue()  # type: ignore[attr-defined]
        pipe.send(manager.address)
        pipe.recv()  # the receiver is connected
        arr = _batch(shape)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            q.put({"x": arr})
        q.put(None)
        pipe.recv()  # the receiver got everything
    finally:
        manager.shutdown()


def run_manager(shape: tuple[int, int], seconds: float) -> Result:
    import multiprocessing as mp

    parent, child = mp.get_context("spawn").Pipe()
    proc = spawn(_manager_sender, child, shape, seconds)
    address = parent.recv()
    manager = _QueueManager(address=address, authkey=_AUTHKEY)
    manager.connect()
    q = manager.get_queue()  # type: ignore[attr-defined]
    parent.send("ready")
    total = batches = 0
    start = 0.0
    while (item := q.get()) is not None:
        if not batches:
            start = time.perf_counter()
        else:
            total += item["x"].nbytes
        batches += 1
        for probe in PROBES:  # benchmarks/cpu.py watching
            probe(batches)
    elapsed = time.perf_counter() - start
    parent.send("done")
    finish(proc)
    return Result(total, batches - 1, elapsed)


# -- (c) pantheon's wire -------------------------------------------------------------------


def _wire_sender(address: str, shape: tuple[int, int], seconds: float) -> None:
    from pantheon._wire import MsgType, client_handshake, connect, encode_parts

    arr = _batch(shape)
    with connect(address, timeout=30) as conn:
        client_handshake(conn, None, timeout=30)
        start_id = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            ids = np.arange(start_id, start_id + shape[0], dtype=np.int64)
            start_id += shape[0]
            header, frames = encode_parts(ids, {("x", ""): arr})
            conn.send(MsgType.DATA, header, frames)
        conn.send(MsgType.END_ROUND)
        conn.recv(timeout=60)  # BYE: the receiver got everything


def run_wire(shape: tuple[int, int], seconds: float, *, pool: bool = False) -> Result:
    from pantheon._wire import BufferPool, MsgType, decode_parts, listen, server_handshake

    alloc = BufferPool() if pool else None

    with listen() as listener:
        proc = spawn(_wire_sender, listener.address, shape, seconds)
        conn = listener.accept(timeout=60)
    with conn:
        server_handshake(conn, None, timeout=30)
        total = batches = 0
        start = 0.0
        while (msg := conn.recv(timeout=60, alloc=alloc)).type == MsgType.DATA:
            _, parts = decode_parts(msg.header, msg.frames)
            if not batches:
                start = time.perf_counter()
            else:
                total += parts[("x", "")].nbytes
            batches += 1
            for probe in PROBES:  # benchmarks/cpu.py watching
                probe(batches)
        elapsed = time.perf_counter() - start
        conn.send(MsgType.BYE)
    finish(proc)
    return Result(total, batches - 1, elapsed)


def run_wire_pool(shape: tuple[int, int], seconds: float) -> Result:
    return run_wire(shape, seconds, pool=True)


# -- (d) Pantheon's public API --------------------------------------------------------------


def _pantheon_sender(port: int, shape: tuple[int, int], seconds: float) -> None:
    from pantheon import Teacher

    arr = _batch(shape)

    def reader():  # one round: the same batch for `seconds`
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            yield {"x": arr}

    with Teacher(out_port=port, timeout=60) as teacher:
        teacher.start(timeout=60)
        teacher.serve(reader, times=1)


def run_pantheon(shape: tuple[int, int], seconds: float) -> Result:
    """Teacher.serve in the child, Student.get_knowledge_generator here over TCP."""
    return _receive(_pantheon_sender, shape, seconds, "tcp")


def _service_sender(port: int, shape: tuple[int, int], seconds: float) -> None:
    from pantheon import Teacher

    arr = _batch(shape)

    def batches():  # one round: the same input batch for `seconds`
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            yield (arr,)

    with Teacher(out_port=port, timeout=60) as teacher:
        teacher.start_knowledge_service(
            feed_list=["x"],
            schema={"x": "x"},  # the input passed through as knowledge
            program=None,
            reader_config={"batch_generator": batches},
        )


def run_service(shape: tuple[int, int], seconds: float, transport: str = "tcp") -> Result:
    """The knowledge service (``start_knowledge_service``) in the child, the student here."""
    return _receive(_service_sender, shape, seconds, transport)


def run_service_shm(shape: tuple[int, int], seconds: float) -> Result:
    """The same, over the same-host path (shared memory)."""
    return _receive(_service_sender, shape, seconds, "auto")


def _receive(
    sender: Callable[..., None], shape: tuple[int, int], seconds: float, transport: str
) -> Result:
    from pantheon import Student

    port = free_port()
    proc = spawn(sender, port, shape, seconds)
    total = batches = 0
    start = 0.0
    with Student(timeout=60, transport=transport) as student:
        student.register_teacher(in_address=f"127.0.0.1:{port}")
        student.start()
        for batch in student.get_knowledge_generator(batch_size=shape[0])():
            if not batches:
                start = time.perf_counter()
            else:
                total += batch["x"].nbytes
            batches += 1
            for probe in PROBES:  # benchmarks/cpu.py watching
                probe(batches)
        elapsed = time.perf_counter() - start
    finish(proc)
    return Result(total, batches - 1, elapsed)


METHODS: dict[str, Callable[[tuple[int, int], float], Result]] = {
    "raw": run_raw,
    "manager": run_manager,
    "wire": run_wire,
    "wire-pool": run_wire_pool,
    "pantheon": run_pantheon,
    "service": run_service,
    "service-shm": run_service_shm,
}
"""Receivers by method name; ``raw`` is the reference the ratios are computed against."""

DESCRIPTIONS: dict[str, str] = {
    "raw": "length prefix + bytes over a plain TCP socket, recv_into one buffer (the reference)",
    "manager": "the seed's transport: pickled dicts through a BaseManager queue server",
    "wire": "Pantheon's framing alone: DATA messages of chunks, fresh receive buffers",
    "wire-pool": "Pantheon's framing alone, receive buffers recycled by a BufferPool",
    "pantheon": "Teacher.serve -> Student generator over TCP (credits, re-batching, read-ahead)",
    "service": "start_knowledge_service -> Student(transport='tcp') generator, as users run it",
    "service-shm": "start_knowledge_service -> Student(transport='auto'): same-host shared memory",
}
"""One line per method, printed above the table."""


def run_method(name: str, shape: tuple[int, int], seconds: float) -> Result:
    """One timed run of method ``name`` with batches of ``shape`` for about ``seconds``."""
    return METHODS[name](shape, seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per run (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated batch sizes")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    rows: list[Row] = []
    for size in args.sizes.split(","):
        shape = SIZES[size]
        for name in methods:
            run_method(name, shape, args.warmup)
        results: dict[str, list[Result]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name in methods:
                results[name].append(run_method(name, shape, args.seconds))
        rows += summarize(size, results)
    print(
        f"online transport, {args.repeats} runs of {args.seconds:g} s each, medians "
        f"(sender in a child process, receiver here; {os.cpu_count()} CPUs)"
    )
    print(report(rows))


@dataclass(frozen=True)
class Row:
    """One method's medians for one batch size, and its ratios (None: no baseline run).

    ``x_raw`` is the ratio of the medians (the targets' measure); ``x_raw_paired`` is the
    median of each repeat's ratio to the raw TCP run of the same repeat, which a machine
    whose speed drifts during the run moves less.
    """

    size: str
    method: str
    mb_s: float
    batches_s: float
    x_raw: float | None
    x_raw_paired: float | None
    x_seed: float | None


def summarize(size: str, results: dict[str, list[Result]]) -> list[Row]:
    """The rows of one batch size from each method's runs (repeat ``i`` of every method is
    the ``i``-th of its list; ``raw`` and ``manager`` are the baselines when present)."""
    raw = [r.mb_s for r in results.get("raw", [])]
    seed_runs = [r.mb_s for r in results.get("manager", [])]
    base = median(raw) if raw else 0.0
    seed = median(seed_runs) if seed_runs else 0.0
    rows = []
    for name, runs in results.items():
        mb_s = median([r.mb_s for r in runs])
        paired = [r.mb_s / b for r, b in zip(runs, raw, strict=False) if b > 0]
        rows.append(
            Row(
                size=size,
                method=name,
                mb_s=mb_s,
                batches_s=median([r.batches_s for r in runs]),
                x_raw=mb_s / base if base > 0 else None,
                x_raw_paired=median(paired) if paired else None,
                x_seed=mb_s / seed if seed > 0 else None,
            )
        )
    return rows


TARGETS: list[tuple[str, str, float]] = [
    ("small", "service", 0.5),
    ("small", "service-shm", 0.5),
    ("1 MiB", "service", 0.8),
    ("1 MiB", "service-shm", 2.0),
]
"""(batch size, method, least ratio to raw TCP): the targets the table is read against."""
SEED_TARGET = 10.0
"""Every path users run (``PUBLIC``) against the seed's BaseManager queue, at least."""
PUBLIC = ("pantheon", "service", "service-shm")
"""The methods that are Pantheon as users run it (``wire`` is the framing alone)."""


def verdicts(rows: list[Row]) -> list[tuple[str, bool]]:
    """(description, met) for each target whose method and baseline were run."""
    by = {(r.size, r.method): r for r in rows}
    out = []
    for size, method, least in TARGETS:
        row = by.get((size, method))
        if row is None or row.x_raw is None:
            continue
        out.append(
            (
                f"{size}: {method} >= {least:g}x raw TCP ({row.x_raw:.2f}x; paired "
                f"{_ratio(row.x_raw_paired)}x)",
                row.x_raw >= least,
            )
        )
    for row in rows:
        if row.method in PUBLIC and row.x_seed is not None:
            out.append(
                (
                    f"{row.size}: {row.method} >= {SEED_TARGET:g}x the seed ({row.x_seed:.2f}x)",
                    row.x_seed >= SEED_TARGET,
                )
            )
    return out


def report(rows: list[Row]) -> str:
    """The methods' descriptions, the table and a PASS/FAIL line per target."""
    methods = list(dict.fromkeys(r.method for r in rows))
    lines = [f"  {name:<12} {DESCRIPTIONS.get(name, '')}" for name in methods]
    cells = [
        [
            f"{r.size} ({SIZES[r.size][0]}x{SIZES[r.size][1]} float32)",
            r.method,
            f"{r.mb_s:,.0f}",
            f"{r.batches_s:,.0f}",
            _ratio(r.x_raw),
            _ratio(r.x_raw_paired),
            _ratio(r.x_seed),
        ]
        for r in rows
    ]
    head = ["batch", "method", "MB/s", "batches/s", "x raw TCP", "paired", "x seed"]
    lines.append(table(head, cells))
    lines += [f"{'PASS' if met else 'FAIL'}  {text}" for text, met in verdicts(rows)]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
