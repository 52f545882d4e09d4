"""Smoke tests of ``benchmarks/offline.py``: it runs and reports its table (never its timings)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.helpers import load_script, run_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "offline.py"
READERS = ["student", "pyarrow", "pickle"]


def _number(cell: str) -> float:
    value = float(cell.replace(",", ""))
    assert math.isfinite(value)
    return value


def test_quick_run_prints_the_table_and_verdicts(tmp_path):
    lines = run_script(SCRIPT, "--quick", "--dir", str(tmp_path), timeout=100)
    assert lines[0].startswith("offline read, 64 MiB of 256x1000 float32 logits")
    assert "medians of 3 interleaved runs" in lines[0]
    assert lines[1].split() == ["reader", "MB/s", "batches/s", "x", "pyarrow", "x", "pickle"]
    assert set(lines[2]) == {"-", " "}
    rows = [line.split() for line in lines[3:6]]
    assert [r[0] for r in rows] == READERS
    for row in rows:
        assert len(row) == 5
        for cell in row[1:]:
            _number(cell)
    by_name = {r[0]: r for r in rows}
    assert by_name["pyarrow"][3] == "1.00"
    assert by_name["pickle"][4] == "1.00"
    verdicts = lines[6:8]
    assert verdicts[0].split()[0] in ("PASS", "FAIL")
    assert "bare pyarrow" in verdicts[0]
    assert verdicts[1].split()[0] in ("PASS", "FAIL")
    assert "pickle format" in verdicts[1]
    random = lines[8:]
    assert random[0].startswith("random access, 3 reads of 256 random sample ids per run")
    assert random[1].split() == ["reader", "MB/s", "reads/s", "x", "pyarrow"]
    rows = [line.split() for line in random[3:-1]]
    assert [r[0] for r in rows] == ["take", "pyarrow", "loader-0", "loader-2"]
    for row in rows:
        assert len(row) == 4
        for cell in row[1:]:
            _number(cell)
    assert rows[1][3] == "1.00"
    assert random[-1].split()[0] in ("PASS", "FAIL")
    assert "take >= 0.8x bare pyarrow table.take" in random[-1]
    assert list(tmp_path.iterdir()) == []  # the data was removed


def _load() -> ModuleType:
    return load_script(SCRIPT, "bench_offline")  # (it puts benchmarks/ on sys.path)


def test_measure_returns_one_row_per_reader(tmp_path):
    bench = _load()
    rows = bench.measure(4 / 1024, 1, str(tmp_path))  # 4 MiB: 4 batches, one timed run
    assert [r["reader"] for r in rows] == READERS
    for row in rows:
        assert set(row) == {
            "reader",
            "mb_s",
            "batches_s",
            "x_pyarrow",
            "x_pickle",
            "nbytes",
            "batches",
        }
        assert row["batches"] == 4
        assert row["nbytes"] == 4 * 256 * 1000 * 4
    verdicts = bench.verdicts(rows)
    assert len(verdicts) == 2
    assert all(isinstance(text, str) and isinstance(met, bool) for text, met in verdicts)
    assert list(tmp_path.iterdir()) == []


_RANDOM = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_offline", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
rows = bench.measure_random(4 / 1024, 1, 2, sys.argv[2])
text, met = bench.random_report(rows, 1)
print(json.dumps({"rows": rows, "text": text, "met": met, "reads": bench.LOADER_READS}))
"""


def test_measure_random_returns_one_row_per_reader(tmp_path):
    # in a fresh process: DataLoader workers are forked, and a fork of the test process (with
    # the threads earlier tests left behind) is not what a user's script is
    proc = subprocess.run(
        [sys.executable, "-c", _RANDOM, str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    rows = out["rows"]
    assert [r["reader"] for r in rows] == ["take", "pyarrow", "loader-0", "loader-2"]
    for row in rows:
        assert set(row) == {"reader", "mb_s", "takes_s", "x_pyarrow", "nbytes", "takes"}
    assert rows[0]["takes"] == 2
    assert rows[0]["nbytes"] == 2 * 256 * 1000 * 4
    assert rows[2]["takes"] == 2 * out["reads"]
    assert isinstance(out["met"], bool)
    assert "random access" in out["text"]
    assert list(tmp_path.iterdir()) == []


def test_wait_benchmark_reports_both_transports_and_the_online_legend():
    """``benchmarks/wait.py`` and ``online.py`` run end to end (small sizes) and print what
    each row is; their figures are for the closing notes, not for tests."""
    bench = SCRIPT.parent
    wait = subprocess.run(
        [
            sys.executable,
            str(bench / "wait.py"),
            "--steps",
            "30",
            "--repeats",
            "1",
            "--step-ms",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert wait.returncode == 0, wait.stderr
    rows = [line for line in wait.stdout.splitlines() if "%" in line]
    assert [r.split("(")[0].strip() for r in rows] == ["TCP", "same host"]
    online = subprocess.run(
        [
            sys.executable,
            str(bench / "online.py"),
            "--repeats",
            "1",
            "--seconds",
            "0.2",
            "--warmup",
            "0.05",
            "--methods",
            "raw,manager,service,service-shm",
            "--sizes",
            "small",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert online.returncode == 0, online.stderr
    legend = [line.split()[0] for line in online.stdout.splitlines() if line.startswith("  ")]
    assert legend == ["raw", "manager", "service", "service-shm"]
    assert "x seed" in online.stdout
