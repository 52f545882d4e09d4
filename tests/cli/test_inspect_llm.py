"""`pantheon inspect` of LLM knowledge: a 152k-token vocabulary stored at each codec tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pantheon import KnowledgeFile, KnowledgeWriter, Ragged, Sampled, TopK
from pantheon._cli.main import format_report, inspect_report
from tests.cli.test_inspect import run_cli

VOCAB = 151_936


def _logits(tokens: list[int], seed: int = 0) -> Ragged:
    rng = np.random.default_rng(seed)
    return Ragged.from_list(
        [(rng.standard_normal((t, VOCAB)) * 2).astype(np.float32) for t in tokens]
    )


@pytest.fixture
def llm_file(tmp_path: Path) -> Path:
    path = tmp_path / "llm.arrow"
    codecs = {
        "input_ids": "int32",
        "fp16": TopK(16, log_softmax=True, temperature=2.0),
        "q8": TopK(16, values_dtype="uint8", log_softmax=True, tail=True),
        "sampled": Sampled(12, temperature=1.0, seed=0),
    }
    with KnowledgeWriter(path, codecs=codecs) as w:
        for b, lengths in enumerate([[3, 2], [4]]):
            logits = _logits(lengths, seed=b)
            ids = Ragged(np.arange(sum(lengths), dtype=np.int64) * 1000, lengths)
            w.write({"input_ids": ids, "fp16": logits, "q8": logits, "sampled": logits})
    return path


def test_inspect_shows_bytes_per_token_holds_temperature_and_topk_mass(llm_file: Path) -> None:
    result = run_cli("inspect", "--json", str(llm_file))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tokens"] == 9
    keys = report["keys"]
    # stored bytes of each key's columns (ragged: values + int64 offsets of each batch)
    offsets = 8 * (3 + 2)  # batches of 2 and 1 samples: 3 + 2 offsets
    assert keys["input_ids"]["stored_bytes"] == 9 * 4 + offsets
    assert keys["fp16"]["stored_bytes"] == 9 * (32 + 36) + 2 * offsets  # values, indices
    assert keys["q8"]["stored_bytes"] == 9 * (16 + 4 + 36 + 2) + 4 * offsets
    assert keys["sampled"]["stored_bytes"] == 9 * (27 + 12) + 2 * offsets
    for key in keys:
        assert keys[key]["bytes_per_token"] == pytest.approx(keys[key]["stored_bytes"] / 9)
    assert (keys["fp16"]["holds"], keys["fp16"]["temperature"]) == ("logprobs", 2.0)
    assert (keys["q8"]["holds"], keys["q8"]["temperature"]) == ("logprobs", 1.0)
    assert (keys["sampled"]["holds"], keys["sampled"]["temperature"]) == ("samples", 1.0)
    assert keys["input_ids"]["holds"] is None
    # the top-k mass, against the exact distributions of the same logits
    exact = []
    for b, lengths in enumerate([[3, 2], [4]]):
        x = _logits(lengths, seed=b).values.astype(np.float64)
        for t in (2.0, 1.0):
            y = x / t
            logp = y - y.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            exact.append((t, np.sort(np.exp(logp), axis=-1)[:, -16:].sum(-1)))
    want = {t: np.concatenate([m for tt, m in exact if tt == t]).mean() for t in (2.0, 1.0)}
    assert keys["fp16"]["topk_mass"] == pytest.approx(want[2.0], rel=2e-3)
    assert keys["q8"]["topk_mass"] == pytest.approx(want[1.0], rel=2e-2)
    assert keys["sampled"]["topk_mass"] is None
    assert keys["sampled"]["mean"] > 0  # stats of the counts
    # the table shows the same
    text = run_cli("inspect", str(llm_file)).stdout
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["sampled"][-4:] == [f"{39 + 2 * offsets / 9:.6g}", "samples", "1", "-"]
    assert rows["fp16"][-3:-1] == ["logprobs", "2"]


def test_a_file_of_the_earlier_topk_layout_is_still_read(tmp_path: Path) -> None:
    """Layout 1 (int16/int32 indices, spec without a version), as earlier versions wrote."""
    path = tmp_path / "old.arrow"
    x = np.random.default_rng(1).standard_normal((3, 70_000)).astype(np.float32)
    with KnowledgeWriter(path, codecs={"l": TopK(4, log_softmax=True, layout=1)}) as w:
        w.write({"l": x})
    with KnowledgeFile(path, sparse_topk=True) as kf:
        assert kf.codecs["l"] == {
            "name": "topk",
            "k": 4,
            "values_dtype": "float16",
            "log_softmax": True,
            "fill": None,
        }
        assert kf.storage["l"]["columns"][1]["dtype"] == "int32"
        sparse = next(iter(kf.iter_chunks())).data["l"]
    np.testing.assert_array_equal(sparse.indices, np.argsort(-x, axis=-1)[:, :4])
    report = inspect_report(path)
    assert report["keys"]["l"]["holds"] == "logprobs"
    assert report["keys"]["l"]["temperature"] == 1.0
    assert "logprobs" in format_report(report)


def test_a_compressed_file_reports_no_stored_bytes_but_still_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "z.arrow"
    x = np.random.default_rng(2).standard_normal((4, 300)).astype(np.float32)
    with KnowledgeWriter(path, compression="zstd", codecs={"l": TopK(4, log_softmax=True)}) as w:
        w.write({"l": x})
    info = inspect_report(path)["keys"]["l"]
    assert info["stored_bytes"] is None and info["bytes_per_sample"] is None
    assert info["holds"] == "logprobs" and 0 < info["topk_mass"] < 1
    assert "-" in format_report(inspect_report(path))
