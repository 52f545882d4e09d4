"""Operations on chunks (``pantheon._chunks``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantheon._chunks import Positions


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 64),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200)), min_size=1, max_size=30),
)
def test_positions_are_the_ids_arange_would_give(block: int, steps: list[tuple[int, int]]) -> None:
    """Consecutive batches, gaps, jumps back and batches larger than a block: always the ids
    ``np.arange`` gives, as int64, and read-only (a shared block must not be written)."""
    positions = Positions(block)
    start = 0
    for gap, n in steps:
        start = max(0, start + gap - 1)  # gap 0: one step back; 1: consecutive; more: a jump
        ids = positions.ids(start, start + n)
        assert ids.dtype == np.int64
        assert np.array_equal(ids, np.arange(start, start + n))
        assert not ids.flags.writeable
        if n:
            with pytest.raises(ValueError, match="read-only"):
                ids[:1] = -1
        start += n


def test_positions_of_consecutive_batches_share_one_block() -> None:
    positions = Positions(1024)
    a, b = positions.ids(0, 64), positions.ids(64, 128)
    assert a.base is not None and b.base is a.base  # slices, not one allocation per batch
