"""A small slice of ``benchmarks/llm_kd.py``: tokenizer, teacher, every tier's knowledge file
through the real codecs, students, the table (its figures are checked, never its timings)."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_script

pytest.importorskip("torch")
pytest.importorskip("tokenizers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "llm_kd.py"
TIERS = [
    "labels only",
    "dense",
    "hidden fp16",
    "fp16 top-16",
    "int8 top-14+tail",
    "sampled n=12",
    "sampled n=16",
]


def load() -> ModuleType:
    return load_script(SCRIPT, "llm_kd")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_small_slice_runs_and_reports_every_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """About 25 s of CPU time: a 400-token vocabulary, 8 teacher steps, 6 student steps."""
    bench = load()
    cfg = bench.Settings(
        vocab=400, text_mb=0.2, ctx=16, teacher_width=32, teacher_layers=1, teacher_steps=8,
        teacher_batch=8,
    )  # fmt: skip
    out = bench.run(cfg, bench.Training(steps=6, held=16), tmp_path)
    rows = {r["tier"]: r for r in out["rows"]}
    assert list(rows) == TIERS
    for r in rows.values():
        assert math.isfinite(r["kl"]) and r["kl"] >= 0 and math.isfinite(r["loss"])
    assert rows["labels only"]["bytes_per_token"] is None
    assert rows["dense"]["retention"] == pytest.approx(1.0)
    assert rows["labels only"]["retention"] == pytest.approx(0.0)
    # exact knowledge from float16 hidden states trains the same student as dense logits
    assert rows["hidden fp16"]["kl"] == pytest.approx(rows["dense"]["kl"], rel=2e-2)
    # 9 bits per index at V = 400: the bytes on disk follow the codecs' layouts
    sizes = {t: rows[t]["bytes_per_token"] for t in TIERS[2:]}
    assert sizes["sampled n=12"] < sizes["sampled n=16"] < sizes["int8 top-14+tail"]
    assert sizes["int8 top-14+tail"] < sizes["fp16 top-16"]
    assert sizes["fp16 top-16"] < sizes["hidden fp16"]
    table = capsys.readouterr().out
    assert "retention" in table and "target: a tier at <= 50 B/token" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "teacher-" + cfg.key() + ".pt",
        "tokenizer-400-0.2.json",
    ]  # the cache; the knowledge files are gone
