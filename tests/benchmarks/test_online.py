"""``benchmarks/online.py``: its ratios and target lines from given runs, and a short real run
that prints the table (its figures are checked for form, never for speed)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script, run_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "online.py"


@pytest.fixture(scope="module")
def online() -> ModuleType:
    return load_script(SCRIPT, "bench_online")  # (it puts benchmarks/ on sys.path)


def _runs(online: ModuleType, *mb_s: float) -> list:
    # Result(nbytes, batches, seconds): one second each, so mb_s is nbytes / 1e6
    return [online.Result(int(v * 1e6), int(v), 1.0) for v in mb_s]


def test_ratios_are_of_the_medians_and_paired_per_repeat(online):
    # raw drifts from fast to slow; the service follows it at 0.5x in every repeat
    results = {
        "raw": _runs(online, 1000, 400, 300),
        "manager": _runs(online, 50, 50, 50),
        "service": _runs(online, 500, 200, 150),
    }
    rows = {r.method: r for r in online.summarize("1 MiB", results)}
    assert list(rows) == ["raw", "manager", "service"]
    service = rows["service"]
    assert service.mb_s == pytest.approx(200)
    assert service.x_raw == pytest.approx(200 / 400)
    assert service.x_raw_paired == pytest.approx(0.5)
    assert service.x_seed == pytest.approx(4.0)
    assert rows["raw"].x_raw == pytest.approx(1.0)
    # the paired ratio is not the ratio of the medians when the runs disagree in order
    skewed = online.summarize(
        "small", {"raw": _runs(online, 100, 200, 300), "service": _runs(online, 300, 100, 150)}
    )
    assert skewed[1].x_raw == pytest.approx(150 / 200)
    assert skewed[1].x_raw_paired == pytest.approx(0.5)  # median of 3.0, 0.5, 0.5
    assert skewed[1].x_seed is None  # no seed run: no ratio to it


def test_verdicts_read_each_target_on_the_ratio_of_the_medians(online):
    rows = online.summarize(
        "1 MiB",
        {
            "raw": _runs(online, 1000, 1000, 1000),
            "manager": _runs(online, 50, 50, 50),
            "service": _runs(online, 810, 790, 800),
            "service-shm": _runs(online, 1900, 2100, 1950),
        },
    )
    verdicts = dict(online.verdicts(rows))
    assert verdicts == {
        "1 MiB: service >= 0.8x raw TCP (0.80x; paired 0.80x)": True,
        "1 MiB: service-shm >= 2x raw TCP (1.95x; paired 1.95x)": False,
        "1 MiB: service >= 10x the seed (16.00x)": True,
        "1 MiB: service-shm >= 10x the seed (39.00x)": True,
    }
    text = online.report(rows)
    assert "FAIL  1 MiB: service-shm >= 2x raw TCP (1.95x; paired 1.95x)" in text
    assert "PASS  1 MiB: service >= 0.8x raw TCP" in text
    # without a raw TCP run there is nothing to read a ratio target on
    alone = online.summarize("small", {"service": _runs(online, 10, 20, 30)})
    assert online.verdicts(alone) == []


def test_a_short_run_prints_the_table_and_the_targets():
    methods = ["raw", "manager", "service", "service-shm"]
    args = ["--repeats", "1", "--seconds", "0.2", "--warmup", "0.05", "--sizes", "small"]
    lines = run_script(SCRIPT, *args, "--methods", ",".join(methods), timeout=100)
    assert lines[0].startswith("online transport, 1 runs of 0.2 s each, medians")
    assert [line.split()[0] for line in lines[1:5]] == methods  # one line saying what each is
    assert lines[5].split() == [
        "batch", "method", "MB/s", "batches/s", "x", "raw", "TCP", "paired", "x", "seed"
    ]  # fmt: skip
    rows = [line.split() for line in lines[7:11]]
    assert [r[3] for r in rows] == methods
    assert rows[0][6:8] == ["1.00", "1.00"]  # raw against itself, both ways
    assert rows[1][8] == "1.00"  # the seed against itself
    verdicts = lines[11:]
    assert [v.split()[0] in ("PASS", "FAIL") for v in verdicts] == [True] * 4
    assert [v.split("  ", 1)[1].split(" >= ")[0] for v in verdicts] == [
        "small: service",
        "small: service-shm",
        "small: service",
        "small: service-shm",
    ]
