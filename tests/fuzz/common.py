"""What the fuzz suites share: their hypothesis settings and how long they run.

``make test`` runs every suite in a bounded form (a few hundred examples each, seconds in
all). ``make fuzz`` sets ``PANTHEON_FUZZ_SCALE`` (default 1) to multiply every suite's number
of examples, for long runs; hypothesis keeps the failing examples it finds in its database
(``.hypothesis/``) and replays them first on the next run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from hypothesis import HealthCheck, settings

from tests.helpers import ROOT

SCALE = max(1, int(os.environ.get("PANTHEON_FUZZ_SCALE", "1")))
"""Multiplier of every fuzz suite's number of examples (``make fuzz`` raises it)."""


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz test: ``examples`` x :data:`SCALE` examples, no deadline."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a child process (the package from this checkout), so that a
    crash (a segfault) fails the test instead of killing the test run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
