"""The reader's direct decode (flatbuffer + mapped body) agrees with pyarrow's own decoding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pantheon import KnowledgeFile, KnowledgeWriter
from pantheon._knowledge import DTYPE_NAMES, to_dtype


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_direct_decode_matches_plain_pyarrow(tmp_path, compression):
    rng = np.random.default_rng(0)
    path = tmp_path / "k.arrow"
    batches = []
    with KnowledgeWriter(path, compression=compression) as w:
        for n in (5, 17, 1, 64):
            batch = {
                f"f_{name}": (rng.standard_normal((n, 3, 2)) * 50).astype(to_dtype(name))
                for name in DTYPE_NAMES
            }
            batch["flat"] = rng.standard_normal(n).astype(np.float32)
            w.write(batch)
            batches.append(batch)
    with KnowledgeFile(path) as kf:
        chunks = list(kf.iter_chunks())
        sliced = list(kf.iter_chunks(start_sample=9))
    assert [len(c.ids) for c in chunks] == [5, 17, 1, 64]
    for chunk, batch in zip(chunks, batches, strict=True):
        for key, value in batch.items():
            got = chunk.data[key]
            assert got.dtype == value.dtype and got.shape == value.shape
            assert np.array_equal(got.view(np.uint8), value.view(np.uint8)), key
            if compression is None:  # views of the mapped file
                assert not got.flags.writeable
    assert int(sliced[0].ids[0]) == 9
    assert np.array_equal(sliced[0].data["flat"], batches[1]["flat"][4:])
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    ids = table.column("__sample_id__").to_numpy()
    assert np.array_equal(ids, np.concatenate([c.ids for c in chunks]))
