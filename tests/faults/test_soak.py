"""The soak of ``tests/faults/soak.py``, bounded: ``PANTHEON_SOAK_SECONDS`` seconds (20 by
default; ``make soak`` runs 180 with a kill every 20 s) with the teacher killed every quarter
of that, at most every 20 s. Checks exactly-once rounds and no growth of RSS, threads or
descriptors of either side beyond the bounds stated in the script."""

from __future__ import annotations

import os

import pytest

from tests.faults import soak

SECONDS = float(os.environ.get("PANTHEON_SOAK_SECONDS", "20"))


@pytest.mark.timeout(SECONDS + 120)
def test_soak_teacher_killed_periodically_no_growth(spawn) -> None:
    """A student reads rounds while its teacher is SIGKILLed and restarted periodically;
    every round is whole and in order, and neither process grows past the bounds."""
    summary = soak.run(SECONDS, min(20.0, SECONDS / 4), spawn)
    assert summary["problems"] == [], summary
    assert summary["kills"] >= 2, summary
