"""Offline reads: the student's generator, bare pyarrow, the seed's pickle file; random access.

One run writes the same knowledge twice into a temporary directory: ``--gib`` GiB (default 1)
of float32 logits in batches of 256 x 1000 (~1 MiB each), as a Pantheon knowledge file
(``KnowledgeWriter``, Arrow IPC) and in the seed's format (each batch a pickled dict appended
to one file). With the page cache warm, readers then read everything back:

``student``  ``Student()`` with one ``register_teacher(in_path=...)``, one round of
             ``get_knowledge_generator(batch_size=256)``, touching one element of each batch.
``pyarrow``  the reference: ``pa.memory_map`` + ``pa.ipc.open_file``, and for every record
             batch the logits column as a zero-copy numpy view of shape [256, 1000], touching
             one element of it.
``pickle``   the seed's format: ``pickle.load`` of each batch (a dict of the logits and int64
             ids) until EOF, touching one element of the logits.

Readers run interleaved (student, pyarrow, pickle, student, ...) after one warm-up run each,
``--repeats`` times (default 5); the table shows medians and each reader's ratio to bare
pyarrow and to pickle. Throughput counts the logits' bytes (MB = 10**6 bytes) over the whole
read, opening included. Targets: the student reads at least 0.5x bare pyarrow and at least
1x pickle; each is reported PASS or FAIL (``--strict`` makes a FAIL exit with status 1).

A second table reads the same knowledge file in random order (shuffled training), each run
``--takes`` reads (default 10) of 256 random sample ids (the same ids for every reader):

``take``        ``KnowledgeFile.take(ids)``, the file opened (and its id index built) once;
``pyarrow``     the reference: ``table.take(ids)`` on the memory-mapped file's table
                (``pa.ipc.open_file(...).read_all()``, opened once), then the logits as a
                numpy array ``[256, 1000]``;
``loader-0``,   a torch ``DataLoader`` over ``pantheon.torch.KnowledgeLookup`` with a
``loader-2``    ``RandomSampler`` (256 samples per batch, ``collate_fn=lookup.collate``) and 0
                or 2 worker processes, started in each run: ``LOADER_READS`` times as many
                batches as ``take`` reads, so that starting the workers does not dominate.

Throughput counts the logits' bytes gathered. Target: ``take`` at least 0.8x bare pyarrow.

    python benchmarks/offline.py               # 1 GiB, 5 repeats
    python benchmarks/offline.py --quick       # 64 MiB, 3 repeats (smoke test)

``run(quick)`` returns the first table's rows as dicts for other callers, ``measure_random``
the second's.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import Result, median, table

ROWS, COLS = 256, 1000
"""Shape of one stored batch and of one student batch (float32, 1,024,000 bytes)."""
KEY = "logits"
TARGET_PYARROW = 0.5
"""The student must read at least this fraction of bare pyarrow's throughput."""
TARGET_PICKLE = 1.0
"""The student must read at least this multiple of the pickle format's throughput."""
QUICK_GIB, QUICK_REPEATS = 64 / 1024, 3
TAKE = 256
"""Sample ids per random read."""
TARGET_TAKE = 0.8
LOADER_READS = 8
"""A data loader run reads this many times as many batches as a ``take`` run."""
"""``KnowledgeFile.take`` must gather at least this fraction of bare pyarrow's throughput."""


# -- data ----------------------------------------------------------------------------------


def write_data(directory: Path, gib: float) -> tuple[Path, Path, int]:
    """Write ``gib`` GiB of logits as a knowledge file and as a pickle file.

    Returns:
        (knowledge file path, pickle file path, number of batches).
    """
    from pantheon._files import KnowledgeWriter

    batches = max(1, round(gib * 2**30 / (ROWS * COLS * 4)))
    arrow_path, pickle_path = directory / "knowledge.arrow", directory / "knowledge.pkl"
    rng = np.random.default_rng(0)
    with KnowledgeWriter(arrow_path) as writer, open(pickle_path, "wb") as out:
        for b in range(batches):
            logits = rng.random((ROWS, COLS), dtype=np.float32)
            ids = np.arange(b * ROWS, (b + 1) * ROWS, dtype=np.int64)
            writer.write({KEY: logits}, ids=ids)
            pickle.dump({KEY: logits, "ids": ids}, out, protocol=pickle.HIGHEST_PROTOCOL)
    return arrow_path, pickle_path, batches


# -- readers -------------------------------------------------------------------------------


def read_student(arrow_path: Path, pickle_path: Path) -> Result:
    """One round through ``Student.get_knowledge_generator(batch_size=256)``."""
    from pantheon import Student

    nbytes = batches = 0
    touched = 0.0
    start = time.perf_counter()
    with Student() as student:
        student.register_teacher(in_path=arrow_path)
        gen = student.get_knowledge_generator(batch_size=ROWS)
        for batch in gen():
            logits = batch[KEY]
            touched += float(logits[0, 0])
            nbytes += logits.nbytes
            batches += 1
    return Result(nbytes, batches, time.perf_counter() - start)


def read_pyarrow(arrow_path: Path, pickle_path: Path) -> Result:
    """Bare pyarrow: memory-mapped IPC file, each batch's column as a [256, 1000] view."""
    import pyarrow as pa

    nbytes = batches = 0
    touched = 0.0
    start = time.perf_counter()
    with pa.memory_map(str(arrow_path), "r") as source:
        reader = pa.ipc.open_file(source)
        column = reader.schema.get_field_index(KEY)
        for i in range(reader.num_record_batches):
            array = reader.get_batch(i).column(column)
            logits = array.flatten().to_numpy(zero_copy_only=True).reshape(len(array), COLS)
            touched += float(logits[0, 0])
            nbytes += logits.nbytes
            batches += 1
    return Result(nbytes, batches, time.perf_counter() - start)


def read_pickle(arrow_path: Path, pickle_path: Path) -> Result:
    """The seed's format: ``pickle.load`` one batch dict after the other until EOF."""
    nbytes = batches = 0
    touched = 0.0
    start = time.perf_counter()
    with open(pickle_path, "rb") as f:
        while True:
            try:
                batch = pickle.load(f)
            except EOFError:
                break
            logits = batch[KEY]
            touched += float(logits[0, 0])
            nbytes += logits.nbytes
            batches += 1
    return Result(nbytes, batches, time.perf_counter() - start)


READERS: dict[str, Callable[[Path, Path], Result]] = {
    "student": read_student,
    "pyarrow": read_pyarrow,
    "pickle": read_pickle,
}
"""Readers by name; ``pyarrow`` and ``pickle`` are the references of the ratios."""


# -- random access -------------------------------------------------------------------------


def _random_ids(total: int, takes: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(total, TAKE, replace=False) for _ in range(takes)]


def random_take(arrow_path: Path, ids: list[np.ndarray]) -> Result:
    """``KnowledgeFile.take`` of each id array (the file opened and indexed beforehand)."""
    from pantheon import KnowledgeFile

    with KnowledgeFile(arrow_path) as kf:
        kf.take(ids[0][:1])  # builds the id index: once per opened file
        start = time.perf_counter()
        nbytes = sum(kf.take(batch)[KEY].nbytes for batch in ids)
        return Result(nbytes, len(ids), time.perf_counter() - start)


def random_pyarrow(arrow_path: Path, ids: list[np.ndarray]) -> Result:
    """Bare pyarrow: ``table.take`` on the memory-mapped file's table, logits to numpy."""
    import pyarrow as pa

    with pa.memory_map(str(arrow_path), "r") as source:
        table = pa.ipc.open_file(source).read_all()
        start = time.perf_counter()
        nbytes = 0
        for batch in ids:
            column = table.take(batch).column(KEY).combine_chunks()
            logits = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), COLS)
            nbytes += logits.nbytes
        return Result(nbytes, len(ids), time.perf_counter() - start)


def random_loader(arrow_path: Path, ids: list[np.ndarray], workers: int) -> Result:
    """A DataLoader over KnowledgeLookup with a RandomSampler and ``workers`` processes."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from pantheon.torch import KnowledgeLookup

    lookup = KnowledgeLookup(arrow_path)
    generator = torch.Generator().manual_seed(len(ids))
    count = TAKE * len(ids) * LOADER_READS
    sampler = RandomSampler(lookup, num_samples=count, generator=generator)
    start = time.perf_counter()
    loader = DataLoader(
        lookup, batch_size=TAKE, sampler=sampler, num_workers=workers, collate_fn=lookup.collate
    )
    nbytes = batches = 0
    for batch in loader:
        nbytes += batch[KEY].numel() * batch[KEY].element_size()
        batches += 1
    return Result(nbytes, batches, time.perf_counter() - start)


def _random_readers() -> dict[str, Callable[[Path, list[np.ndarray]], Result]]:
    readers: dict[str, Callable[[Path, list[np.ndarray]], Result]] = {
        "take": random_take,
        "pyarrow": random_pyarrow,
    }
    try:
        import torch  # noqa: F401
    except ImportError:
        return readers
    readers["loader-0"] = lambda path, ids: random_loader(path, ids, 0)
    readers["loader-2"] = lambda path, ids: random_loader(path, ids, 2)
    return readers


def measure_random_file(arrow_path: Path, repeats: int, takes: int) -> list[dict[str, Any]]:
    """The random-access readers on an existing file, interleaved, after a warm-up each.

    Returns:
        One dict per reader: ``reader``, ``mb_s`` (median), ``takes_s`` (median reads of 256
        ids per second), ``x_pyarrow`` (ratio of medians), ``nbytes``, ``takes``.
    """
    import pyarrow as pa

    with pa.memory_map(str(arrow_path), "r") as source:
        total = pa.ipc.open_file(source).read_all().num_rows
    readers = _random_readers()
    results: dict[str, list[Result]] = {name: [] for name in readers}
    for reader in readers.values():
        reader(arrow_path, _random_ids(total, 1, seed=repeats + 1))
    for r in range(repeats):
        ids = _random_ids(total, takes, r)
        for name, reader in readers.items():
            results[name].append(reader(arrow_path, ids))
    mb_s = {name: median([x.mb_s for x in rs]) for name, rs in results.items()}
    return [
        {
            "reader": name,
            "mb_s": mb_s[name],
            "takes_s": median([x.batches_s for x in rs]),
            "x_pyarrow": mb_s[name] / mb_s["pyarrow"],
            "nbytes": rs[0].nbytes,
            "takes": rs[0].batches,
        }
        for name, rs in results.items()
    ]


def measure_random(
    gib: float, repeats: int, takes: int = 10, directory: str | None = None
) -> list[dict[str, Any]]:
    """Write ``gib`` GiB of logits and run :func:`measure_random_file` on it."""
    with tempfile.TemporaryDirectory(prefix="pantheon-bench-", dir=directory) as tmp:
        arrow_path, _, _ = write_data(Path(tmp), gib)
        return measure_random_file(arrow_path, repeats, takes)


def random_report(rows: list[dict[str, Any]], repeats: int) -> tuple[str, bool]:
    """The random-access table and its PASS/FAIL line, and whether the target was met."""
    cells = [
        [r["reader"], f"{r['mb_s']:,.0f}", f"{r['takes_s']:,.1f}", f"{r['x_pyarrow']:.2f}"]
        for r in rows
    ]
    take = next(r for r in rows if r["reader"] == "take")
    met = take["x_pyarrow"] >= TARGET_TAKE
    lines = [
        f"random access, {rows[0]['takes']} reads of {TAKE} random sample ids per run "
        f"({LOADER_READS}x as many for the loaders); medians of {repeats} interleaved runs "
        "after a warm-up",
        table(["reader", "MB/s", "reads/s", "x pyarrow"], cells),
        f"{'PASS' if met else 'FAIL'}  take >= {TARGET_TAKE:g}x bare pyarrow table.take "
        f"({take['x_pyarrow']:.2f}x)",
    ]
    return "\n".join(lines), met


# -- measuring -----------------------------------------------------------------------------


def measure(gib: float, repeats: int, directory: str | None = None) -> list[dict[str, Any]]:
    """Write the data, run every reader interleaved ``repeats`` times, return median rows.

    Args:
        gib: GiB of logits to write and read (rounded to whole 256 x 1000 batches).
        repeats: timed runs per reader, after one warm-up run each.
        directory: where to create the temporary directory (default: the system's);
            it is removed at the end.

    Returns:
        One dict per reader: ``reader``, ``mb_s`` (median MB/s, 10**6 bytes), ``batches_s``
        (median), ``x_pyarrow`` and ``x_pickle`` (ratios of medians), ``nbytes``, ``batches``.
    """
    if gib <= 0 or repeats < 1:
        raise ValueError(f"gib must be > 0 and repeats >= 1, got {gib!r} and {repeats!r}")
    with tempfile.TemporaryDirectory(prefix="pantheon-bench-", dir=directory) as tmp:
        return measure_files(*write_data(Path(tmp), gib), repeats)


def measure_files(
    arrow_path: Path, pickle_path: Path, expected: int, repeats: int
) -> list[dict[str, Any]]:
    """:func:`measure` on files :func:`write_data` wrote (``expected`` batches)."""
    results: dict[str, list[Result]] = {name: [] for name in READERS}
    for reader in READERS.values():  # warm-up: page cache, imports
        reader(arrow_path, pickle_path)
    for _ in range(repeats):
        for name, reader in READERS.items():
            result = reader(arrow_path, pickle_path)
            if result.batches != expected:
                raise RuntimeError(
                    f"reader {name} read {result.batches} batches, expected {expected}"
                )
            results[name].append(result)
    mb_s = {name: median([r.mb_s for r in rs]) for name, rs in results.items()}
    rows = []
    for name, rs in results.items():
        rows.append(
            {
                "reader": name,
                "mb_s": mb_s[name],
                "batches_s": median([r.batches_s for r in rs]),
                "x_pyarrow": mb_s[name] / mb_s["pyarrow"],
                "x_pickle": mb_s[name] / mb_s["pickle"],
                "nbytes": rs[0].nbytes,
                "batches": rs[0].batches,
            }
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """The benchmark with its defaults: 1 GiB and 5 repeats, or 64 MiB and 3 with ``quick``."""
    if quick:
        return measure(QUICK_GIB, QUICK_REPEATS)
    return measure(1.0, 5)


def verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The two targets for the student reader: (description, met)."""
    student = next(r for r in rows if r["reader"] == "student")
    return [
        (
            f"student >= {TARGET_PYARROW:g}x bare pyarrow ({student['x_pyarrow']:.2f}x)",
            student["x_pyarrow"] >= TARGET_PYARROW,
        ),
        (
            f"student >= {TARGET_PICKLE:g}x pickle format ({student['x_pickle']:.2f}x)",
            student["x_pickle"] >= TARGET_PICKLE,
        ),
    ]


def report(rows: list[dict[str, Any]], gib: float, repeats: int) -> tuple[str, bool]:
    """The printed table and PASS/FAIL lines, and whether both targets were met."""
    cells = [
        [
            r["reader"],
            f"{r['mb_s']:,.0f}",
            f"{r['batches_s']:,.0f}",
            f"{r['x_pyarrow']:.2f}",
            f"{r['x_pickle']:.2f}",
        ]
        for r in rows
    ]
    size = rows[0]["nbytes"] / 2**20
    lines = [
        f"offline read, {size:,.0f} MiB of {ROWS}x{COLS} float32 logits ({rows[0]['batches']} "
        f"batches), student batch {ROWS}; medians of {repeats} interleaved runs after a warm-up, "
        f"page cache warm ({os.cpu_count()} CPUs)",
        table(["reader", "MB/s", "batches/s", "x pyarrow", "x pickle"], cells),
    ]
    ok = True
    for text, met in verdicts(rows):
        lines.append(f"{'PASS' if met else 'FAIL'}  {text}")
        ok = ok and met
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    """Command line entry: parse options, measure, print the table; the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of logits (default 1.0)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per reader (default 5; 3 with --quick)",
    )
    parser.add_argument(
        "--dir", default=None, help="where to put the temporary data (default: system temp)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_GIB * 1024:g} MiB, 3 repeats"
    )
    parser.add_argument(
        "--takes", type=int, default=None, help="random reads per run (default 10; 3 with --quick)"
    )
    parser.add_argument("--strict", action="store_true", help="exit with 1 if a target is missed")
    args = parser.parse_args(argv)
    gib, repeats = (QUICK_GIB, QUICK_REPEATS) if args.quick else (args.gib, 5)
    takes = args.takes if args.takes is not None else (3 if args.quick else 10)
    if args.repeats is not None:
        repeats = args.repeats
    with tempfile.TemporaryDirectory(prefix="pantheon-bench-", dir=args.dir) as tmp:
        arrow_path, pickle_path, expected = write_data(Path(tmp), gib)
        rows = measure_files(arrow_path, pickle_path, expected, repeats)
        text, ok = report(rows, gib, repeats)
        print(text, flush=True)
        random_rows = measure_random_file(arrow_path, repeats, takes)
    text, met = random_report(random_rows, repeats)
    print(text)
    return 1 if args.strict and not (ok and met) else 0


if __name__ == "__main__":
    sys.exit(main())
