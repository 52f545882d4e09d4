"""Fuzzing the knowledge chunk decoder and ragged lengths (finding 4: lengths that wrap).

Whatever header and frames come, :func:`decode_parts` returns ids and parts that are
consistent (every ragged field's lengths are >= 0 and add up to its values' rows, every array
has the described sample count) or raises ``ProtocolError``; nothing else.
"""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pantheon import KnowledgeError, ProtocolError, Ragged
from pantheon._util import lengths_of_offsets, lengths_total
from pantheon._wire import decode_parts, encode_parts
from tests.fuzz.common import fuzz_settings

WRAPPING = [3, 2**63 - 1, 2**63 - 2, 3]
"""Lengths of four samples whose int64 sum wraps around to 3 (the finding's case)."""


def ragged_chunk(lengths: list[int], tokens: Any) -> tuple[dict[str, Any], list[Any]]:
    """Header and frames of one ragged field ``tok`` with these lengths and values."""
    header = {"chunk": {"samples": len(lengths), "fields": [["tok", "", "int64", [], 1]]}}
    frames = [
        np.arange(len(lengths), dtype=np.int64),
        np.asarray(tokens, dtype=np.int64),
        np.asarray(lengths, dtype=np.int64),
    ]
    return header, [bytearray(f.tobytes()) for f in frames]


def decode(header: Any, frames: Any) -> Any:
    """decode_parts, asserting that it fails only with a ProtocolError and that what it
    returns is consistent."""
    try:
        ids, parts = decode_parts(header, frames)
    except ProtocolError:
        return ProtocolError
    n = len(ids)
    for value in parts.values():
        if isinstance(value, Ragged):
            assert len(value.lengths) == n
            assert (value.lengths >= 0).all()
            assert int(value.lengths.astype(object).sum()) == value.values.shape[0]
        else:
            assert value.shape[0] == n
    return ids, parts


# --------------------------------------------------------------------------- finding 4


def test_finding_4_wrapping_lengths_on_the_wire_are_refused() -> None:
    """[3, 2**63-1, 2**63-2, 3] sum to 3 in int64: three tokens used to come back as the
    samples [[10, 11, 12], [], [], [10, 11, 12]]. Now a ProtocolError names the field."""
    header, frames = ragged_chunk(WRAPPING, [10, 11, 12])
    with pytest.raises(ProtocolError, match=r"chunk field 'tok'.*2\*\*62"):
        decode_parts(header, frames)


def test_finding_4_wrapping_lengths_with_empty_tokens_are_refused() -> None:
    """With a zero-size token shape the values frame is empty whatever the rows, so only the
    lengths say how many there are: they must not wrap either."""
    header = {"chunk": {"samples": 4, "fields": [["tok", "", "float32", [0], 1]]}}
    lengths = np.asarray([2**62, 2**62, 2**62, 2**62], dtype=np.int64)  # 2**64 wraps to 0
    frames = [bytearray(np.arange(4, dtype=np.int64).tobytes()), bytearray(), lengths.tobytes()]
    with pytest.raises(ProtocolError, match="2\\*\\*62"):
        decode_parts(header, frames)


@pytest.mark.parametrize(
    ("lengths", "rows", "match"),
    [
        (WRAPPING, 3, r"2\*\*62"),
        ([1, -1, 3], 3, "negative length -1 for sample 1"),
        ([2**63 - 1, 1], 0, r"2\*\*62"),
        ([1, 2], 4, "sum to 3 but values hold 4"),
    ],
)
def test_ragged_refuses_lengths_that_do_not_add_up(
    lengths: list[int], rows: int, match: str
) -> None:
    with pytest.raises(KnowledgeError, match=match):
        Ragged(np.zeros(rows), lengths)


def test_lengths_total_is_exact_near_the_limit() -> None:
    assert lengths_total(np.asarray([2**61, 2**61 - 1], dtype=np.int64)) == 2**62 - 1
    assert lengths_total(np.zeros(0, np.int64)) == 0
    with pytest.raises(KnowledgeError):
        lengths_total(np.asarray([2**61, 2**61], dtype=np.int64))


@pytest.mark.parametrize(
    ("offsets", "rows", "match"),
    [
        ([0, 3, 1, 4], 4, "decrease at sample 1"),
        ([-1, 2], 4, "from -1"),
        ([0, 5], 4, "to 5, outside the 4 rows"),
        ([0, 2**62, -(2**62) - 10, 4], 4, "decrease at sample 1"),  # diffs that wrap positive
    ],
)
def test_offsets_must_stay_within_their_rows_and_never_decrease(
    offsets: list[int], rows: int, match: str
) -> None:
    with pytest.raises(KnowledgeError, match=match):
        lengths_of_offsets(np.asarray(offsets, dtype=np.int64), rows)


# --------------------------------------------------------------------------- fuzzing

_INTERESTING = st.sampled_from(
    [0, 1, -1, 2, 3, 7, 8, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63), 2**63 - 2]
)


@st.composite
def chunk_messages(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    """A valid header and frames: a few dense and ragged fields of small random sizes."""
    n = draw(st.integers(0, 5))
    parts: dict[tuple[str, str], Any] = {}
    for i in range(draw(st.integers(0, 3))):
        inner = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
        dtype = draw(st.sampled_from(["int8", "float32", "int64", "bool"]))
        if draw(st.booleans()):
            lengths = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
            rows = sum(lengths)
            parts[(f"k{i}", "")] = Ragged(np.zeros((rows, *inner), dtype), lengths)
        else:
            parts[(f"k{i}", draw(st.sampled_from(["", "values"])))] = np.zeros((n, *inner), dtype)
    header, frames = encode_parts(np.arange(n, dtype=np.int64), parts)
    return header, [bytearray(np.asarray(f).tobytes()) for f in frames]


@fuzz_settings(300)
@given(message=chunk_messages(), data=st.data())
def test_mutated_chunk_headers_decode_consistently_or_raise(message: Any, data: Any) -> None:
    header, frames = message
    header = copy.deepcopy(header)
    spec = header["chunk"]
    what = data.draw(st.sampled_from(["samples", "field", "frames", "lengths"]))
    if what == "samples":
        spec["samples"] = data.draw(st.one_of(_INTERESTING, st.none(), st.text(max_size=2)))
    elif what == "field" and spec["fields"]:
        field = data.draw(st.sampled_from(spec["fields"]))
        slot = data.draw(st.integers(0, 4))
        field[slot] = data.draw(
            st.one_of(
                _INTERESTING,
                st.sampled_from(["", "tok", "float64", "object", "int8"]),
                st.lists(_INTERESTING, max_size=3),
                st.lists(st.sampled_from([0, 1, 2**62, 2**70]), max_size=70),
                st.none(),
            )
        )
    elif what == "frames" and frames:
        at = data.draw(st.integers(0, len(frames) - 1))
        size = data.draw(st.integers(0, 64))
        frames[at] = bytearray(size)
    elif what == "lengths":
        lod = [i for i, f in enumerate(spec["fields"]) if f[4] == 1]
        if lod:  # overwrite one length of a ragged field (its frame follows the values')
            k = 1 + sum(1 + f[4] for f in spec["fields"][: lod[0]]) + 1
            view = np.frombuffer(frames[k], np.int64)
            if view.size:
                view[data.draw(st.integers(0, view.size - 1))] = data.draw(_INTERESTING)
    decode(header, frames)


@fuzz_settings(300)
@given(
    header=st.recursive(
        st.one_of(st.none(), st.integers(), st.text(max_size=4), st.booleans()),
        lambda inner: st.one_of(
            st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=15,
    ),
    frames=st.lists(st.binary(max_size=40), max_size=4),
)
def test_random_headers_and_frames_raise_protocol_errors(header: Any, frames: list[bytes]) -> None:
    decode({"chunk": header}, [bytearray(f) for f in frames])
    decode(header, [bytearray(f) for f in frames])


@fuzz_settings(200)
@given(
    lengths=st.lists(st.one_of(st.integers(0, 5), _INTERESTING), min_size=1, max_size=6),
    tokens=st.integers(0, 12),
)
def test_random_ragged_lengths_decode_consistently_or_raise(
    lengths: list[int], tokens: int
) -> None:
    header, frames = ragged_chunk(lengths, np.arange(tokens))
    decode(header, frames)


@pytest.mark.parametrize("where", ["field", "samples", "fields"])
def test_headers_nested_as_deep_as_msgpack_allows_are_protocol_errors(where: str) -> None:
    """A received header may nest 1,024 levels (msgpack's own limit); describing it in an
    error used to raise RecursionError."""
    deep = msgpack.unpackb(b"\x91" * 1020 + b"\xc0")
    spec: dict[str, Any] = {"samples": 1, "fields": []}
    if where == "field":
        spec["fields"] = [deep]
    else:
        spec[where] = deep
    with pytest.raises(ProtocolError, match="malformed chunk"):
        decode_parts({"chunk": spec}, [])


@pytest.mark.parametrize(
    "inner", [[2**70, 0], [2**62, 0, 5], [0] * 70], ids=["huge", "too-big", "too-many"]
)
def test_empty_shapes_numpy_cannot_hold_are_protocol_errors(inner: list[int]) -> None:
    header = {"chunk": {"samples": 1, "fields": [["x", "", "int8", inner, 0]]}}
    with pytest.raises(ProtocolError, match="not possible"):
        decode_parts(header, [bytearray(8), bytearray()])
