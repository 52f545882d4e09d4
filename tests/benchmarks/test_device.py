"""``benchmarks/device.py``: its table from given runs, its check of the knowledge, and a short
real run on the CPU (figures checked for form, never for speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.helpers import load_script, run_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device.py"


@pytest.fixture(scope="module")
def device() -> ModuleType:
    return load_script(SCRIPT, "bench_device")  # (it puts benchmarks/ on sys.path)


def test_the_table_gives_medians_and_ratios_to_the_bare_model(device):
    def runs_of(samples, seconds, nbytes, waits, transport, pinned):
        return [
            device.Run(n, t, b, w, transport, p)
            for n, t, b, w, p in zip(samples, seconds, nbytes, waits, pinned, strict=True)
        ]

    runs = {
        "bare": runs_of([1000] * 2, [1.0, 0.5], [4e6] * 2, [0.0] * 2, "-", [False] * 2),
        "tcp": runs_of([900] * 2, [1.0] * 2, [3.6e6] * 2, [0.5, 0.7], "tcp", [True] * 2),
        "shm": runs_of([500, 700], [1.0] * 2, [2e6, 2.8e6], [0.1, 0.3], "shm", [False, True]),
    }
    text = device.report(device.Config(), runs)
    lines = text.splitlines()
    assert lines[0].startswith("torch teacher MLP 256-1024-1024-1000 on cpu, batch 256")
    assert "medians of 2 runs" in lines[0]
    assert [line.split()[0] for line in lines[1:4]] == ["bare", "tcp", "shm"]
    assert lines[4].split() == [
        "method", "samples/s", "x", "bare", "MB/s", "waiting", "transport", "pinned"
    ]  # fmt: skip
    rows = {r.split()[0]: r.split() for r in lines[6:]}
    assert rows["bare"] == ["bare", "1,500", "1.00", "6", "-", "-", "-"]  # medians: 1000, 2000
    assert rows["tcp"] == ["tcp", "900", "0.60", "4", "60.0", "%", "tcp", "yes"]
    assert rows["shm"] == ["shm", "600", "0.40", "2", "20.0", "%", "shm", "no"]  # one not pinned


def test_knowledge_other_than_the_bare_models_is_an_error(device):
    expected = np.ones((4, 3), np.float32)
    device._check(expected, expected + 1e-6, "tcp")  # within tolerance
    with pytest.raises(
        RuntimeError, match=r"tcp: .* not the bare model's .* largest difference 0.5"
    ):
        device._check(expected, expected + 0.5, "tcp")
    with pytest.raises(RuntimeError, match=r"shape \(4, 2\) against \(4, 3\)"):
        device._check(expected, expected[:, :2], "shm")


SMALL = ["--features", "8", "--hidden", "16", "--classes", "10", "--batch-size", "16"]


def test_a_short_run_on_the_cpu_prints_the_table():
    lines = run_script(SCRIPT, *SMALL, "--batches", "6", "--repeats", "1", "--pin")
    assert lines[0].startswith("torch ")
    offset = 2 if lines[1].startswith("note: --pin has no effect without CUDA") else 1
    title, *rest = lines[offset:]
    assert title.startswith("torch teacher MLP 8-16-16-10 on cpu, batch 16, 6 batches per run")
    rows = {r.split()[0]: r.split() for r in rest[5:]}
    assert list(rows) == ["bare", "tcp", "shm"]
    assert rows["bare"][2] == "1.00"
    assert rows["tcp"][6] == "tcp"
    assert rows["shm"][6] == "shm"  # the same host: the ring
    for row in rows.values():
        assert float(row[1].replace(",", "")) > 0


def test_fewer_than_two_batches_is_refused():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--batches", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--batches must be at least 2 (the first is not timed), got 1" in proc.stderr
