"""`pantheon inspect`, through the real command line entry point."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pantheon import FileFormatError, Ragged
from pantheon._cli.main import format_report, inspect_report
from pantheon._files import KnowledgeWriter


def _command():
    """The installed `pantheon` script, else the module run by this interpreter."""
    beside = Path(sys.executable).with_name("pantheon")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("pantheon")
    return [found] if found else [sys.executable, "-m", "pantheon._cli"]


def run_cli(*args):
    return subprocess.run(
        [*_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def knowledge(tmp_path):
    path = tmp_path / "teacher.arrow"
    with KnowledgeWriter(path, codecs={"logits": "float16"}, metadata={"teacher": "t1"}) as w:
        for i in range(3):
            w.write(
                {
                    "x": np.arange(4 * i, 4 * i + 4, dtype=np.int64).reshape(4, 1),
                    "logits": np.full((4, 10), 0.5, np.float32),
                    "tok": Ragged(np.array([1, 2, 3, 4, 5, 6], np.int32), [1, 2, 3, 0]),
                    "flag": np.array([True, False, True, False]),
                }
            )
    return path


def test_inspect_prints_a_table(knowledge):
    result = run_cli("inspect", str(knowledge))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("samples", "12", "batches", "bytes on disk", "compression", "none", "cut short"):
        assert text in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["x"][1:] == [
        *["[-1,", "1]", "int64", "0", "int64", "0", "11", "5.5"],
        "8/sample",  # bytes per sample of its column
        "-",  # holds: no knowledge codec
        "-",  # temperature
        "-",  # top-k mass
    ]
    assert lines["logits"][3:10] == ["float32", "0", "float16", "(cast)", "0.5", "0.5", "0.5"]
    assert lines["logits"][10] == "20/sample"  # 10 float16
    assert lines["tok"][1:4] == ["[-1,", "-1]", "int32"]
    assert "teacher=t1" in out


def test_inspect_json(knowledge):
    result = run_cli("inspect", "--json", str(knowledge))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 12
    assert report["batches"] == 3
    assert report["bytes"] == knowledge.stat().st_size
    assert report["bytes_per_sample"] == pytest.approx(knowledge.stat().st_size / 12)
    assert report["compression"] is None
    assert report["truncated"] is None
    assert report["codecs"] == {"logits": {"name": "cast", "dtype": "float16"}}
    assert report["metadata"] == {"teacher": "t1"}
    keys = report["keys"]
    assert list(keys) == ["x", "logits", "tok", "flag"]
    assert {k: keys["x"][k] for k in ("shape", "dtype", "lod_level")} == {
        "shape": [-1, 1],
        "dtype": "int64",
        "lod_level": 0,
    }
    assert (keys["x"]["min"], keys["x"]["max"], keys["x"]["mean"]) == (0, 11, 5.5)
    # ragged: over every token of every sample
    assert keys["tok"]["lod_level"] == 1
    assert (keys["tok"]["min"], keys["tok"]["max"], keys["tok"]["mean"]) == (1, 6, 3.5)
    assert keys["tok"]["count"] == 18
    assert keys["flag"]["mean"] == 0.5
    assert keys["logits"]["columns"] == [{"name": "logits", "dtype": "float16", "shape": [-1, 10]}]


def test_inspect_reports_where_a_file_was_cut(knowledge):
    knowledge.write_bytes(knowledge.read_bytes()[:-30])
    report = inspect_report(knowledge)
    assert report["truncated"]["complete_batches"] == 3
    assert report["truncated"]["offset"] > 0
    assert "YES" in format_report(report)


def test_inspect_without_stats_and_of_shards(tmp_path):
    out = tmp_path / "shards"
    with KnowledgeWriter(out, max_shard_samples=2) as w:
        for i in range(3):
            w.write({"x": np.full((2, 3), np.nan if i == 1 else i, np.float64)})
    report = inspect_report(out, stats=False)
    assert len(report["shards"]) == 3
    assert "min" not in report["keys"]["x"]
    stats = inspect_report(out)["keys"]["x"]
    assert (stats["min"], stats["max"], stats["mean"]) == ("nan", "nan", "nan")
    json.dumps(stats, allow_nan=False)


def test_a_garbage_file_is_a_one_line_error_with_exit_code_1(tmp_path):
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"this is not arrow at all")
    result = run_cli("inspect", str(junk))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(junk) in lines[0]
    assert "not an Arrow IPC file" in lines[0]
    with pytest.raises(FileFormatError):
        inspect_report(tmp_path / "missing.arrow")


def test_bad_arguments_exit_with_code_2(tmp_path):
    assert run_cli("inspect", "--frobnicate", str(tmp_path)).returncode == 2
    assert run_cli("inspect").returncode == 2
    helped = run_cli("inspect", "--help")
    assert helped.returncode == 0
    assert "--json" in helped.stdout
