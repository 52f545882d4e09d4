"""``pantheon bench``: run the benchmark scripts of a source checkout and print their tables.

The benchmarks (``benchmarks/offline.py``, ``online.py``, ``service.py``, ``wait.py``,
``students.py``, ``device.py``) compare Pantheon
with baselines measured side by side in the same run (bare pyarrow, raw TCP, the seed's
pickle file and ``BaseManager`` queue, a bare model loop) and print ratios: absolute
figures on a shared machine mean little. ``cpu.py`` accounts for ``online.py``'s ratios: the
CPU each thread of the sender and the receiver spends per batch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

__all__ = ["BENCHMARKS", "benchmark_dir", "register"]

BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    # name: (full arguments, --quick arguments)
    "offline": ([], ["--quick"]),
    "online": ([], ["--repeats", "1", "--seconds", "0.5", "--warmup", "0.2"]),
    "service": ([], ["--repeats", "2", "--batches", "8", "--paths", "bare,service,teacher"]),
    "wait": ([], ["--steps", "200", "--repeats", "1"]),
    "students": ([], ["--quick"]),
    "device": ([], ["--batches", "8", "--repeats", "1", "--hidden", "256"]),
    "cpu": ([], ["--sizes", "small", "--warmup", "0.2", "--window", "0.5"]),
}


def benchmark_dir() -> Path | None:
    """The ``benchmarks/`` folder of the source checkout this package runs from, if any."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "benchmarks"
        if (candidate / "offline.py").is_file():
            return candidate
    return None


def register(main: click.Group) -> None:
    """Add ``bench`` to the ``pantheon`` command group."""

    @main.command()
    @click.argument("names", nargs=-1, type=click.Choice([*BENCHMARKS, "all"]))
    @click.option("--quick", is_flag=True, help="Small sizes and few repeats (a smoke run).")
    def bench(names: tuple[str, ...], quick: bool) -> None:
        """Run benchmarks and print their ratio tables (default: all).

        \b
        offline  student reading a knowledge file vs bare pyarrow and the seed's pickle file
        online   teacher-to-student over TCP vs raw TCP and the seed's BaseManager queue
        service  knowledge service vs the same model in a bare loop; top-k bytes per token
        wait     share of a PyTorch training loop's time spent waiting for online knowledge
        students one teacher serving several students and groups vs one student alone
        device   a torch teacher served to a student in another process vs the bare model
        cpu      CPU per batch of each thread of online's sender and receiver (Linux)
        """
        folder = benchmark_dir()
        if folder is None:
            raise click.ClickException(
                "the benchmark scripts ship with the source repository (benchmarks/); run "
                "`pantheon bench` from an editable install of a checkout (pip install -e .)"
            )
        chosen = list(BENCHMARKS) if not names or "all" in names else list(dict.fromkeys(names))
        failed = []
        for name in chosen:
            full, fast = BENCHMARKS[name]
            click.echo(f"== {name} ==")
            cmd = [sys.executable, str(folder / f"{name}.py"), *(fast if quick else full)]
            if subprocess.call(cmd) != 0:
                failed.append(name)
        if failed:
            raise click.ClickException(f"benchmark(s) failed: {', '.join(failed)}")
