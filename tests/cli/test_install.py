"""What `make demo` and `make test` install, and the package metadata they install from.

`make -n` prints the commands a target would run without running them; a fresh VENV path makes
every install step due.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_EXTRAS = ("torch", "hf", "demo", "minilm", "test")


def make_dry_run(target: str, tmp_path: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True, env=outside_make(),
    )  # fmt: skip
    return out.stdout.splitlines()


def outside_make() -> dict[str, str]:
    """The environment without what an enclosing `make` passes down (CI runs the suite under
    `make test`, whose MAKELEVEL makes a nested make print "Leaving directory" lines)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def installs(lines: list[str]) -> list[tuple[int, str]]:
    return [(i, line) for i, line in enumerate(lines) if "pip install" in line]


def test_make_demo_installs_the_demo_extra_alone_and_says_so(tmp_path) -> None:
    lines = make_dry_run("demo", tmp_path)
    steps = installs(lines)
    assert steps, lines
    package = [line for _, line in steps if " -e " in line]
    assert len(package) == 1
    assert package[0].endswith("-e '.[demo]'")
    assert "-c constraints.txt" in package[0]
    for i, line in steps:
        assert "--quiet" not in line and " -q" not in line
        assert lines[i - 1].startswith("echo ") or lines[i - 2].startswith("echo "), line
    assert any("a few minutes the first time" in line for line in lines)
    assert lines[-1].endswith("/pantheon demo")


def test_make_test_installs_the_test_extras_through_the_constraints(tmp_path) -> None:
    lines = make_dry_run("test", tmp_path)
    package = [line for _, line in installs(lines) if " -e " in line]
    assert len(package) == 1
    assert "-c constraints.txt" in package[0]
    assert re.search(r"-e '\.\[test(,[a-z]+)*\]'", package[0])
    unit = [line for line in lines if "-m pytest" in line]
    assert unit and '-m "not gpu"' in unit[0]


def test_metadata_takes_a_torch_range_and_constraints_pin_it() -> None:
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["license"] == "Apache-2.0"  # SPDX string, not a table
    assert any(
        re.fullmatch(r"setuptools>=(\d+)", req) and int(req.split(">=")[1]) >= 77
        for req in meta["build-system"]["requires"]
    )
    extras = meta["project"]["optional-dependencies"]
    for extra in TORCH_EXTRAS:
        torch_reqs = [r for r in extras[extra] if re.match(r"torch\b", r)]
        assert len(torch_reqs) == 1 and "==" not in torch_reqs[0], (extra, torch_reqs)
        assert ">=" in torch_reqs[0] and "<" in torch_reqs[0]
    assert any(r.startswith("onnxscript") for r in extras["onnx"])
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", line.strip()) for line in pins)
