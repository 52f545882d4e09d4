"""Knowledge chunks on the wire: ids and stored parts, zero-copy both ways, validated."""

from __future__ import annotations

import math
import threading
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pantheon import KnowledgeError, ProtocolError, Ragged
from pantheon._chunks import concat_chunks
from pantheon._knowledge import DTYPE_NAMES, Chunk, to_dtype
from pantheon._wire import (
    MsgType,
    Pieces,
    connect,
    decode_parts,
    encode_joined,
    encode_parts,
    inproc_pair,
    listen,
)

DTYPES = [to_dtype(n) for n in DTYPE_NAMES]


def encode_chunk(chunk: Chunk) -> tuple[dict[str, Any], list[Any]]:
    return encode_parts(chunk.ids, {(k, ""): v for k, v in chunk.data.items()})


def decode_chunk(header: Any, frames: Any) -> Chunk:
    ids, parts = decode_parts(header, frames)
    assert all(part == "" for _, part in parts)
    return Chunk(ids, {k: v for (k, _), v in parts.items()})


def chunk_roundtrip(chunk: Chunk) -> Chunk:
    header, frames = encode_chunk(chunk)
    header = msgpack.unpackb(msgpack.packb(header))  # as it comes off the wire
    return decode_chunk(header, [memoryview(bytearray(np.asarray(f).tobytes())) for f in frames])


def assert_same_chunk(got: Chunk, want: Chunk) -> None:
    assert got.ids.dtype == np.int64
    assert np.array_equal(got.ids, want.ids)
    assert list(got.data) == list(want.data)
    for key, value in want.data.items():
        out = got.data[key]
        if isinstance(value, Ragged):
            assert isinstance(out, Ragged)
            assert out.values.dtype == value.values.dtype
            assert out.values.tobytes() == value.values.tobytes()
            assert np.array_equal(out.lengths, value.lengths)
        else:
            assert isinstance(out, np.ndarray)
            assert out.dtype == value.dtype
            assert out.shape == value.shape
            assert out.tobytes() == value.tobytes()


@st.composite
def chunks(draw: st.DrawFn) -> Chunk:
    n = draw(st.integers(0, 6))
    ids = np.array(draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)), dtype=np.int64)
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4, unique=True))
    data: dict[str, Any] = {}
    for name in names:
        dtype = draw(st.sampled_from(DTYPES))
        inner = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
        if draw(st.booleans()):
            lengths = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
            rows = sum(lengths)
            values = (
                np.arange(rows * math.prod(inner), dtype=np.int64)
                .astype(dtype)
                .reshape(rows, *inner)
            )
            data[name] = Ragged(values, lengths)
        else:
            data[name] = (
                np.arange(n * math.prod(inner), dtype=np.int64).astype(dtype).reshape(n, *inner)
            )
    return Chunk(ids, data)


@settings(max_examples=150, deadline=None)
@given(chunks())
def test_chunks_round_trip(chunk: Chunk) -> None:
    assert_same_chunk(chunk_roundtrip(chunk), chunk)


def test_chunk_frames_are_zero_copy_both_ways() -> None:
    logits = np.random.default_rng(0).random((8, 10), dtype=np.float32)
    seq = Ragged(np.arange(12, dtype=np.int32).reshape(6, 2), [1, 0, 2, 1, 1, 1, 0, 0])
    chunk = Chunk(np.arange(8, dtype=np.int64), {"logits": logits, "seq": seq})
    header, frames = encode_chunk(chunk)
    assert len(frames) == 4
    assert np.shares_memory(frames[0], chunk.ids)
    assert np.shares_memory(frames[1], logits)
    assert np.shares_memory(frames[2], seq.values)
    assert np.shares_memory(frames[3], seq.lengths)
    bufs = [bytearray(np.asarray(f).tobytes()) for f in frames]
    got = decode_chunk(header, [memoryview(b) for b in bufs])
    assert np.shares_memory(got.data["logits"], np.frombuffer(bufs[1], np.uint8))
    assert isinstance(got.data["seq"], Ragged)
    assert np.shares_memory(got.data["seq"].values, np.frombuffer(bufs[2], np.uint8))
    assert_same_chunk(got, chunk)


def test_chunk_over_a_connection_keeps_field_order() -> None:
    a, b = inproc_pair()
    with a, b:
        data = {k: np.full((3, 2), i, np.int16) for i, k in enumerate(["z", "a", "m", "b"])}
        header, frames = encode_chunk(Chunk(np.array([5, 6, 7]), data))
        header["round"] = 2  # callers add their own keys
        a.send(MsgType.DATA, header, frames)
        msg = b.recv(timeout=10)
        got = decode_chunk(msg.header, msg.frames)
        assert list(got.data) == ["z", "a", "m", "b"]
        assert msg.header["round"] == 2


def test_encode_chunk_rejects_bad_chunks() -> None:
    with pytest.raises(KnowledgeError, match="has 2 samples but the chunk has 3 ids"):
        encode_chunk(Chunk(np.arange(3), {"x": np.zeros((2, 1))}))
    with pytest.raises(KnowledgeError, match="1-D"):
        encode_chunk(Chunk(np.zeros((2, 2), np.int64), {"x": np.zeros((2, 1))}))
    with pytest.raises(KnowledgeError, match="unsupported dtype"):
        encode_chunk(Chunk(np.arange(2), {"x": np.zeros((2, 1), np.complex64)}))


def _good() -> tuple[dict[str, Any], list[Any]]:
    chunk = Chunk(
        np.arange(2), {"x": np.zeros((2, 3), np.float32), "r": Ragged(np.arange(3), [1, 2])}
    )
    header, frames = encode_chunk(chunk)
    return header, [memoryview(bytearray(np.asarray(f).tobytes())) for f in frames]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h, f: h.pop("chunk"), "'chunk' map"),
        (lambda h, f: h["chunk"].update(samples=-1), "malformed chunk description"),
        (lambda h, f: h["chunk"].update(samples=3), "chunk ids"),
        (lambda h, f: f.pop(), "needs 4 frames"),
        (lambda h, f: f.__setitem__(1, bytearray(20)), "do not match"),
        (lambda h, f: h["chunk"]["fields"][0].__setitem__(2, "str"), "unsupported dtype"),
        (lambda h, f: h["chunk"]["fields"][0].__setitem__(3, 3), "malformed chunk field"),
        (lambda h, f: h["chunk"]["fields"][0].__setitem__(1, 7), "malformed chunk field"),
        (lambda h, f: h["chunk"]["fields"][1].__setitem__(0, "x"), "appears twice"),
        (lambda h, f: h["chunk"]["fields"].append(["y"]), "malformed chunk field"),
        (
            lambda h, f: f.__setitem__(3, bytearray(np.array([1, 1], np.int64).tobytes())),
            "do not match",
        ),
        (
            lambda h, f: f.__setitem__(3, bytearray(np.array([4, -1], np.int64).tobytes())),
            "negative",
        ),
    ],
)
def test_decode_chunk_validates(edit: Any, match: str) -> None:
    header, frames = _good()
    edit(header, frames)
    with pytest.raises(ProtocolError, match=match):
        decode_chunk(header, frames)


def test_parts_travel_as_key_part_pairs() -> None:
    values = np.ones((2, 3), np.float16)
    parts = {
        ("logits", "values"): values,
        ("logits", "indices"): np.zeros((2, 3), np.int16),
        ("logits@values", ""): np.full((2, 1), 7, np.int64),  # a raw key that looks like a part
    }
    header, frames = encode_parts(np.arange(2), parts)
    header = msgpack.unpackb(msgpack.packb(header))
    _, got = decode_parts(header, [memoryview(bytearray(np.asarray(f).tobytes())) for f in frames])
    assert list(got) == list(parts)
    assert got[("logits@values", "")].tolist() == [[7], [7]]
    assert got[("logits", "values")].dtype == np.float16


def joined(chunks: list[Chunk]) -> tuple[dict[str, Any], list[Any]] | None:
    return encode_joined([(c.ids, {(k, ""): v for k, v in c.data.items()}) for c in chunks])


def same_fields(n: int) -> st.SearchStrategy[list[Chunk]]:
    """``n`` chunks with the same fields (names, dtypes, inner shapes, kinds)."""

    @st.composite
    def draw_them(draw: st.DrawFn) -> list[Chunk]:
        first = draw(chunks())
        out = [first]
        for _ in range(n - 1):
            rows = draw(st.integers(0, 5))
            data: dict[str, Any] = {}
            for key, v in first.data.items():
                if isinstance(v, Ragged):
                    lengths = draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))
                    values = np.ones((sum(lengths), *v.values.shape[1:]), v.values.dtype)
                    data[key] = Ragged(values, lengths)
                else:
                    data[key] = np.full((rows, *v.shape[1:]), 3, v.dtype)
            out.append(Chunk(np.arange(rows, dtype=np.int64) + 100 * len(out), data))
        return out

    return draw_them()


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4).flatmap(same_fields))
def test_joined_chunks_decode_as_their_concatenation(parts: list[Chunk]) -> None:
    """Frames gathered from several chunks are, on the wire, the frames of the chunks
    concatenated: decoded, one chunk equal to ``concat_chunks``."""
    out = joined(parts)
    assert out is not None
    header, frames = out
    assert all(isinstance(f, Pieces) and len(f.parts) == len(parts) for f in frames)
    a, b = inproc_pair()
    with a, b:
        a.send(MsgType.DATA, header, frames)
        msg = b.recv(timeout=10)
    assert_same_chunk(decode_chunk(msg.header, msg.frames), concat_chunks(parts))


def test_chunks_whose_fields_differ_are_not_joined() -> None:
    a = Chunk(np.arange(2), {"x": np.zeros((2, 3), np.float32)})
    for other in (
        {"x": np.zeros((2, 3), np.float64)},  # dtype
        {"x": np.zeros((2, 4), np.float32)},  # inner shape
        {"y": np.zeros((2, 3), np.float32)},  # key
        {"x": Ragged(np.zeros((2, 3), np.float32), [1, 1])},  # kind
    ):
        assert joined([a, Chunk(np.arange(2, 4), other)]) is None


def test_joined_frames_go_to_sendmsg_without_a_copy_over_tcp() -> None:
    """Over a real socket a joined message's pieces are sent as they are (no joined copy
    is made first: the pieces' own memory is what the kernel reads)."""
    rng = np.random.default_rng(1)
    parts = [
        Chunk(np.arange(i * 300, (i + 1) * 300), {"x": rng.random((300, 500), dtype=np.float32)})
        for i in range(3)
    ]
    out = joined(parts)
    assert out is not None
    header, frames = out
    assert all(np.shares_memory(p, c.data["x"]) for p, c in zip(frames[1].parts, parts))
    with listen("127.0.0.1", 0) as lst:
        client = connect(lst.address, timeout=10)
        server = lst.accept(timeout=10)
        with client, server:
            sent = threading.Thread(target=client.send, args=(MsgType.DATA, header, frames))
            sent.start()
            msg = server.recv(timeout=10)
            sent.join(10)
    assert_same_chunk(decode_chunk(msg.header, msg.frames), concat_chunks(parts))
