"""Bit-packing of integers at 1 to 32 bits: round trips and the documented byte layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantheon import KnowledgeError
from pantheon._codecs import bits_for, pack_bits, packed_size, unpack_bits


def reference_pack(values: np.ndarray, bits: int) -> np.ndarray:
    """docs/format.md: value j's bit i is bit j * bits + i of the row, LSB first in each byte."""
    rows, m = values.shape
    stream = (values[..., None].astype(np.uint64) >> np.arange(bits, dtype=np.uint64)) & 1
    stream = stream.astype(np.uint8).reshape(rows, m * bits)
    if m == 0:
        return np.zeros((rows, 0), np.uint8)
    return np.packbits(stream, axis=-1, bitorder="little")


@settings(max_examples=300, deadline=None)
@given(
    bits=st.integers(1, 32),
    rows=st.integers(0, 5),
    count=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_and_layout_at_every_width(bits: int, rows: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 1 << bits, size=(rows, count), dtype=np.uint64).astype(np.int64)
    values[:, :1] = (1 << bits) - 1  # the extremes of the range
    values[:, 1:2] = 0
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (rows, packed_size(count, bits)) == (rows, (count * bits + 7) // 8)
    np.testing.assert_array_equal(packed, reference_pack(values, bits))
    np.testing.assert_array_equal(unpack_bits(packed, bits, count, np.int64), values)


@pytest.mark.parametrize("bits", range(1, 33))
def test_every_width_round_trips_on_many_axes(bits: int) -> None:
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 1 << bits, size=(3, 4, 11), dtype=np.uint64).astype(np.int64)
    packed = pack_bits(values, bits)
    assert packed.shape == (3, 4, packed_size(11, bits))
    np.testing.assert_array_equal(unpack_bits(packed, bits, 11, np.int64), values)


def test_whole_byte_widths_are_little_endian_integers() -> None:
    values = np.array([[1, 2, 65535, 300]])
    assert pack_bits(values, 16).tobytes() == values.astype("<u2").tobytes()
    assert pack_bits(values, 32).tobytes() == values.astype("<u4").tobytes()
    assert pack_bits(np.array([[5, 1]]), 3).tobytes() == bytes([0b001101])


@pytest.mark.parametrize(("size", "bits"), [(1, 1), (2, 1), (3, 2), (32_000, 15), (65_536, 16),
                                            (65_537, 17), (100_000, 17), (151_936, 18),
                                            (2**32, 32)])  # fmt: skip
def test_bits_for_a_vocabulary(size: int, bits: int) -> None:
    assert bits_for(size) == bits


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(KnowledgeError, match="8 does not fit in 3 bits"):
        pack_bits(np.array([[1, 8]]), 3)
    with pytest.raises(KnowledgeError, match="-1 does not fit"):
        pack_bits(np.array([[-1]]), 8)
    with pytest.raises(KnowledgeError, match="integers"):
        pack_bits(np.array([[1.0]]), 8)
    with pytest.raises(KnowledgeError, match=r"width must be an int in \[1, 32\]"):
        pack_bits(np.array([[1]]), 33)
    with pytest.raises(KnowledgeError, match="expected uint8 rows of 2 bytes"):
        unpack_bits(np.zeros((1, 3), np.uint8), 5, 3)
    with pytest.raises(KnowledgeError, match="range of 1 to"):
        bits_for(0)
