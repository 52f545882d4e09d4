"""Smoke test of ``benchmarks/codec_tiers.py``: it runs and reports the bytes of each tier
(exact sizes, never its timings)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "codec_tiers.py"


def _load() -> ModuleType:
    return load_script(SCRIPT, "bench_codec_tiers")  # (it puts benchmarks/ on sys.path)


def test_tiers_report_their_bytes_per_token(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    args = ["--vocab", "151936", "--batches", "1", "--seqs", "2", "--tokens", "8"]
    reports = bench.main([*args, "--repeats", "1", "--encode-tokens", "4"])
    out = capsys.readouterr().out
    for name in ("dense fp16", "hf layout 1", "topk16 q8+tail", "sampled n=12", "18 bits",
                 "vs topk16 fp16"):  # fmt: skip
        assert name in out
    per_token = {name: r["keys"]["logits"]["stored_bytes"] / 16 for name, r in reports.items()}
    offsets = 8 * 3 / 16  # one batch of 2 sequences: 3 int64 offsets per column
    assert per_token["dense fp16"] == 151_936 * 2 + offsets
    assert per_token["hf layout 1"] == 16 * 2 + 16 * 4 + 2 * offsets
    assert per_token["topk16 fp16"] == 16 * 2 + 36 + 2 * offsets
    assert per_token["topk16 q8+tail"] == 16 + 4 + 36 + 2 + 4 * offsets
    assert per_token["sampled n=12"] == 27 + 12 + 2 * offsets
    ids = {name: r["keys"]["input_ids"]["stored_bytes"] / 16 for name, r in reports.items()}
    assert ids["hf layout 1"] == 8 + offsets and ids["sampled n=12"] == 4 + offsets
