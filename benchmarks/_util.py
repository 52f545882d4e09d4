"""Small helpers shared by the benchmark scripts: child processes, medians, tables."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Result:
    """One measured run: payload bytes and batches received in ``seconds``."""

    nbytes: int
    batches: int
    seconds: float

    @property
    def mb_s(self) -> float:
        """Throughput in MB/s (10**6 bytes per second)."""
        return self.nbytes / self.seconds / 1e6

    @property
    def batches_s(self) -> float:
        """Batches per second."""
        return self.batches / self.seconds


PROBES: list[Callable[[int], None]] = []
"""Called by the receivers of ``online.py`` after each batch with the count so far (empty
unless ``cpu.py`` watches a run)."""

NAMES_DIR = "PANTHEON_BENCH_THREAD_NAMES"
"""Environment variable: a folder where spawned children write their threads' names."""


def spawn(target: Callable[..., Any], *args: Any) -> mp.process.BaseProcess:
    """Start ``target(*args)`` in a fresh (spawned) child process."""
    proc = mp.get_context("spawn").Process(target=_child, args=(target, args))
    proc.start()
    return proc


def _child(target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    folder = os.environ.get(NAMES_DIR)
    if folder:  # cpu.py reads /proc, which knows threads by number only
        threading.Thread(
            target=_report_names, args=(folder,), name="benchmark-names", daemon=True
        ).start()
    target(*args)


def _report_names(folder: str) -> None:
    path = os.path.join(folder, f"{os.getpid()}.json")
    while True:
        names = {t.native_id: t.name for t in threading.enumerate()}
        with open(path + ".tmp", "w") as f:
            json.dump(names, f)
        os.replace(path + ".tmp", path)
        time.sleep(0.2)


def finish(proc: mp.process.BaseProcess, timeout: float = 60.0) -> None:
    """Wait for a child; kill it if it overstays, and fail if it did not exit cleanly."""
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise RuntimeError(f"benchmark child {proc.name} did not finish within {timeout:g} s")
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark child {proc.name} failed with exit code {proc.exitcode}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a child process to listen on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sync(device: str) -> None:
    """Wait for the work queued on a CUDA ``device`` (nothing for the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return statistics.median(values)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with right-aligned columns (the first left-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
