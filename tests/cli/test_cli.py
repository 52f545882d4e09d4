"""The `pantheon` command through its real entry point (subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PANTHEON = shutil.which("pantheon", path=str(Path(sys.executable).parent)) or "pantheon"


def run(
    *args: str, cwd: Path | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PANTHEON, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("demo", "serve", "dump", "inspect", "bench"):
        assert command in out.stdout


def test_demo_quick_writes_the_report(tmp_path):
    out = run("demo", "--quick", "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr[-2000:]
    for label in (
        "teacher 1: mlp (online, over TCP), test accuracy",
        "teacher 2: cnn (offline, knowledge file), test accuracy",
        "student on hard labels only, test accuracy",
        "student distilled from both teachers, test accuracy",
        "effect of distillation",
        "knowledge throughput",
        "student wait time",
    ):
        assert label in out.stdout
    report = tmp_path / "report"
    assert (report / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((report / "results.json").read_text())
    assert isinstance(data, dict) and data
    assert "student distilled from both teachers" in (report / "results.md").read_text()


def test_dump_then_inspect_through_the_entry_point(tmp_path):
    (tmp_path / "toymodel.py").write_text(
        "import numpy as np\n"
        "def teacher(x):\n    return {'y': x * 2.0}\n"
        "def batches():\n"
        "    for s in range(0, 50, 10):\n"
        "        yield (np.arange(s, s + 10, dtype=np.float32).reshape(-1, 1),)\n"
    )
    out = run(
        "dump",
        "toymodel:teacher",
        "--reader",
        "toymodel:batches",
        "--feed",
        "x",
        "--schema",
        "y",
        "--out",
        "k.arrow",
        "--fp16",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "done: 50 samples in 5 batches" in out.stdout
    info = run("inspect", str(tmp_path / "k.arrow"), "--json")
    assert info.returncode == 0
    report = json.loads(info.stdout)
    assert report["samples"] == 50


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--epochs", "0"],
        ["serve", "m:f", "--feed", "x"],  # neither --port nor --out
        ["dump", "m:f", "--feed", "x"],  # no --out
        ["dump", "nope_module:f", "--reader", "nope_module:r", "--feed", "x", "--out", "k.arrow"],
        ["bench", "nonsense"],
        ["inspect"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, args):
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Error" in out.stderr or "Usage" in out.stderr


def test_ctrl_c_stops_a_dump_cleanly_and_leaves_a_readable_file(tmp_path):
    import signal
    import time

    from pantheon import KnowledgeFile

    (tmp_path / "slowmodel.py").write_text(
        "import threading\nimport numpy as np\n"
        "def teacher(x):\n    return {'y': x * 2.0}\n"
        "def batches():\n"
        "    for s in range(0, 10**7, 10):\n"
        "        threading.Event().wait(0.005)  # a slow reader\n"
        "        yield (np.arange(s, s + 10, dtype=np.float32).reshape(-1, 1),)\n"
    )
    proc = subprocess.Popen(
        [
            PANTHEON,
            "dump",
            "slowmodel:teacher",
            "--reader",
            "slowmodel:batches",
            "--feed",
            "x",
            "--schema",
            "y",
            "--out",
            "k.arrow",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            (tmp_path / "k.arrow").stat().st_size < 20_000
            if (tmp_path / "k.arrow").exists()
            else True
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "dump never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "interrupted" in out
    with KnowledgeFile(tmp_path / "k.arrow") as kf:
        assert kf.truncated is None
        assert kf.num_samples > 0
