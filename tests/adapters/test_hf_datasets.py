"""pantheon.hf.knowledge_dataset: a knowledge file as a Hugging Face datasets.Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

from pantheon import KnowledgeWriter, Ragged, TopK  # noqa: E402
from pantheon.hf import knowledge_dataset  # noqa: E402
from tests.files.test_files import _mapped_ranges  # noqa: E402


def write(path: Path, **kwargs: object) -> Path:
    rng = np.random.default_rng(0)
    with KnowledgeWriter(path, **kwargs) as w:  # type: ignore[arg-type]
        for b in range(3):
            ids = np.arange(b * 4, b * 4 + 4)
            lengths = ids % 3
            w.write(
                {
                    "x": ids.reshape(-1, 1),
                    "logits": rng.normal(size=(4, 8)).astype(np.float32),
                    "tok": Ragged(np.repeat(ids, lengths).astype(np.int32), lengths),
                }
            )
    return path


def test_a_knowledge_file_opens_as_a_dataset_without_copies(tmp_path: Path) -> None:
    path = write(tmp_path / "k.arrow")
    ds = knowledge_dataset(path)
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["__sample_id__", "x", "logits", "tok"]
    assert len(ds) == 12
    ranges = list(_mapped_ranges(path))
    for chunk in ds.data.table.column("logits").chunks:  # the values are the mapped file's
        addr = chunk.values.buffers()[1].address
        assert any(lo <= addr < hi for lo, hi in ranges)
    row = ds[5]
    assert row["__sample_id__"] == 5
    assert row["x"] == [5]
    assert row["tok"] == [5, 5]
    batch = ds.with_format("torch")[2:6]
    assert batch["logits"].shape == (4, 8)
    assert batch["logits"].dtype == torch.float32
    assert batch["x"].reshape(-1).tolist() == [2, 3, 4, 5]
    doubled = ds.map(lambda b: {"twice": [2 * r[0] for r in b["x"]]}, batched=True)
    assert doubled["twice"] == [2 * i for i in range(12)]
    assert knowledge_dataset(path)._fingerprint == ds._fingerprint  # from the file, not its data


def test_codecs_show_their_stored_parts(tmp_path: Path) -> None:
    path = write(tmp_path / "k", codecs={"logits": TopK(3)}, use_fp16=True, max_shard_samples=4)
    ds = knowledge_dataset(path)
    assert ds.column_names == ["__sample_id__", "x", "logits@values", "logits@indices", "tok"]
    assert ds.features["logits@values"].feature.dtype == "float16"
    assert ds["__sample_id__"] == list(range(12))  # the shards in order
