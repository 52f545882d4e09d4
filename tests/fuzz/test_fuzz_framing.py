"""Fuzzing the framing over an in-memory connection, and the decoders behind it.

Bytes written raw into a connection come out of ``recv`` as messages, or as a
``ProtocolError`` (malformed, over a cap) or a ``ConnectionLostError`` (the stream ended);
the messages' values and chunks then decode or raise ``ProtocolError``. Nothing else, and
nothing over the receiver's caps is ever allocated.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pantheon import ConnectionLostError, ProtocolError, Ragged
from pantheon._wire import (
    MAGIC,
    MsgType,
    StreamConnection,
    decode_parts,
    decode_value,
    encode_parts,
    encode_value,
    inproc_pair,
    pipe_pair,
)
from tests.fuzz.common import fuzz_settings

CAP = 1 << 16  # the receiver's caps in these tests: no fuzzed prefix allocates more


def wire_bytes(messages: list[tuple[int, dict[str, Any], list[Any]]]) -> bytes:
    """The exact bytes that a connection sends for ``messages``, read off the other end."""
    a, b = pipe_pair()
    sender = StreamConnection(a)
    for mtype, header, frames in messages:
        sender.send(mtype, header, frames)
    sender.close()
    out = bytearray()
    chunk = memoryview(bytearray(1 << 16))
    while n := b.recv_into(chunk, None):
        out += chunk[:n]
    return bytes(out)


_GOOD = wire_bytes(
    [
        (MsgType.USER, {"value": encode_value({"a": (1, np.arange(3))})[0]}, [np.arange(3)]),
        (
            MsgType.DATA,
            *encode_parts(
                np.arange(3, dtype=np.int64),
                {
                    ("x", ""): np.ones((3, 2), np.float32),
                    ("tok", ""): Ragged(np.arange(4, dtype=np.int32), [1, 0, 3]),
                },
            ),
        ),
        (MsgType.USER, {"value": encode_value(None)[0]}, []),
    ]
)


def receive_all(data: bytes) -> list[Any]:
    """Feed ``data`` to a receiver with small caps; decode what comes out. Returns the
    outcomes in order, asserting that nothing but the documented errors is raised."""
    a, b = inproc_pair(capacity=len(data) + 1)
    b.max_header_bytes = b.max_message_bytes = CAP
    b.max_frames = 64
    a.send_raw(data)
    a.close()
    out: list[Any] = []
    with b:
        while True:
            try:
                msg = b.recv(timeout=10)
            except (ProtocolError, ConnectionLostError) as exc:
                out.append(type(exc))
                return out
            out.append(_decode(msg))


def _decode(msg: Any) -> Any:
    try:
        if msg.type == MsgType.USER:
            return decode_value(msg.header.get("value"), msg.frames)
        if msg.type == MsgType.DATA:
            return decode_parts(msg.header, msg.frames)
    except ProtocolError:
        return ProtocolError
    return msg.type


def test_the_good_stream_decodes() -> None:
    out = receive_all(_GOOD)
    assert out[0]["a"][1].tolist() == [0, 1, 2]
    assert out[1][1][("tok", "")].lengths.tolist() == [1, 0, 3]
    assert out[2:] == [None, ConnectionLostError]


@fuzz_settings(300)
@given(edits=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=6))
def test_flipped_bytes_in_a_stream(edits: list[tuple[int, int]]) -> None:
    data = bytearray(_GOOD)
    for at, byte in edits:
        data[at % len(data)] = byte
    receive_all(bytes(data))


@fuzz_settings(200)
@given(cut=st.integers(0, len(_GOOD)))
def test_a_stream_cut_anywhere(cut: int) -> None:
    out = receive_all(_GOOD[:cut])
    assert out[-1] in (ProtocolError, ConnectionLostError)


@fuzz_settings(300)
@given(
    mtype=st.integers(0, 65535),
    hlen=st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
    lengths=st.lists(st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1)), max_size=8),
    nframes=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    rest=st.binary(max_size=200),
)
def test_hostile_prefixes_and_frame_tables(
    mtype: int, hlen: int, lengths: list[int], nframes: int | None, rest: bytes
) -> None:
    count = len(lengths) if nframes is None else nframes
    prefix = struct.pack("<4sBBHII", MAGIC, 1, 0, mtype, hlen, count)
    table = struct.pack(f"<{len(lengths)}Q", *lengths)
    out = receive_all(prefix + table + rest)
    assert out[-1] in (ProtocolError, ConnectionLostError)


@fuzz_settings(200)
@given(data=st.binary(max_size=400))
def test_random_streams(data: bytes) -> None:
    receive_all(data)
