import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantheon import ConfigError, Ragged
from pantheon._knowledge import Chunk
from pantheon._student import Rebatcher


def _chunks(total: int, cuts: list[int], ragged: bool = False) -> list[Chunk]:
    bounds = sorted({0, total, *[c for c in cuts if 0 < c < total]})
    out = []
    for a, b in itertools.pairwise(bounds):
        ids = np.arange(a, b, dtype=np.int64)
        data = {"x": ids.reshape(-1, 1) * 10}
        if ragged:
            data["seq"] = Ragged.from_list([np.full(i % 3 + 1, i) for i in range(a, b)])
        out.append(Chunk(ids, data))
    return out


def _run(chunks: list[Chunk], batch_size: int) -> list[Chunk]:
    rb = Rebatcher(batch_size)
    out = []
    for c in chunks:
        rb.push(c)
        while (b := rb.pop()) is not None:
            out.append(b)
    if (tail := rb.flush()) is not None:
        out.append(tail)
    return out


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 120),
    cuts=st.lists(st.integers(0, 120), max_size=12),
    batch_size=st.integers(1, 40),
    ragged=st.booleans(),
)
def test_any_split_of_the_same_samples_gives_the_same_student_batches(
    total, cuts, batch_size, ragged
):
    out = _run(_chunks(total, cuts, ragged), batch_size)
    reference = _run(_chunks(total, [], ragged), batch_size)
    assert [len(c.ids) for c in out] == [
        min(batch_size, total - i) for i in range(0, total, batch_size)
    ]
    for got, want in zip(out, reference, strict=True):
        assert np.array_equal(got.ids, want.ids)
        assert np.array_equal(got.data["x"], want.data["x"])
        if ragged:
            assert got.data["seq"] == want.data["seq"]
    assert np.array_equal(np.concatenate([c.ids for c in out]), np.arange(total))


def test_chunks_of_the_batch_size_are_handed_through_without_copy():
    chunks = _chunks(64, [32])
    out = _run(chunks, 32)
    assert out[0].data["x"] is chunks[0].data["x"]
    big = _chunks(64, [])
    halves = _run(big, 32)
    assert np.shares_memory(halves[1].data["x"], big[0].data["x"])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_size_must_be_positive_int(bad):
    with pytest.raises(ConfigError, match="batch_size"):
        Rebatcher(bad)
