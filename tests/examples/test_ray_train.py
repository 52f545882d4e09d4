"""The Ray Train example (examples/ray_train): a TorchTrainer of 2 workers, online and offline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.mark.timeout(400)  # a local Ray instance, a pool, a Ray Data job and a TorchTrainer
def test_two_ranks_distill_from_a_pool_and_from_generated_shards(tmp_path):
    log = tmp_path / "stderr.log"
    with log.open("w") as err:  # Ray logs a lot there: a file, never a pipe that fills up
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "ray_train" / "train.py"),
                "--samples",
                "1024",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=380,
            check=False,
        )
    assert done.returncode == 0, log.read_text()[-3000:]
    lines = {ln.split(":")[0]: ln for ln in done.stdout.splitlines() if ": 2 ranks" in ln}
    for phase in ("online", "offline"):
        assert "received 2048 of 2048 samples, every sample once: True" in lines[phase]
        assert lines[phase].endswith("lower: True")
