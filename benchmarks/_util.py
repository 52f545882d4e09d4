"""Small helpers shared by the benchmark scripts: child processes, medians, tables."""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
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


def spawn(target: Callable[..., Any], *args: Any) -> mp.process.BaseProcess:
    """Start ``target(*args)`` in a fresh (spawned) child process."""
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    return proc


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
