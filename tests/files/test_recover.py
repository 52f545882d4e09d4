"""Repairing a knowledge file cut short: what it keeps, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pantheon import FileFormatError, KnowledgeFile
from pantheon._files import KnowledgeWriter, repair


def _cut(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _written(path: Path, batches: int, **kwargs: object) -> list[np.ndarray]:
    values = [np.full((50, 40), i, np.float32) for i in range(batches)]
    with KnowledgeWriter(path, **kwargs) as w:
        for v in values:
            w.write({"x": v})
    return values


def test_a_cut_file_keeps_its_complete_batches_and_its_compression(tmp_path: Path) -> None:
    """The repaired file was written uncompressed: an lz4 cache part grew 18-fold."""
    path = tmp_path / "k.arrow"
    values = _written(path, 3, compression="lz4")
    _cut(path, path.stat().st_size - 100)  # into the footer: the 3 batches are complete
    assert repair(path) == 3
    with KnowledgeFile(path) as kf:
        assert kf.compression == "lz4" and kf.num_batches == 3
        got = np.concatenate([c.data["x"] for c in kf.iter_chunks()])
    assert np.array_equal(got, np.concatenate(values))
    assert not (tmp_path / "k.arrow.repairing").exists()


def test_a_complete_file_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "k.arrow"
    _written(path, 2)
    before = path.read_bytes()
    assert repair(path) == 2
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_knowledge_file_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa

    path = tmp_path / "plain.arrow"
    table = pa.table({"a": [1, 2, 3]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    data = path.read_bytes()
    path.write_bytes(b"ARROW1\0\0" + data)  # a file's header, no footer: cut short
    with pytest.raises(FileFormatError, match="not a Pantheon knowledge file"):
        repair(path)
    assert not (tmp_path / "plain.arrow.repairing").exists()
