"""Fuzzing the value decoder (``Teacher.send`` / ``Student.send`` payloads) and the depth limit.

Whatever bytes come, :func:`decode_value` returns a value or raises ``ProtocolError``; it
never crashes the process, whatever the nesting (finding 1: nested tuples segfaulted a
receiving thread).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pantheon import ConfigError, ProtocolError
from pantheon._wire import MsgType, decode_value, encode_value, inproc_pair
from pantheon._wire.values import EXT_NDARRAY, EXT_SCALAR, EXT_TUPLE, MAX_DEPTH
from tests.fuzz.common import fuzz_settings, run_isolated
from tests.helpers import Runner


def nested_tuples(levels: int) -> bytes:
    """The finding's payload: ``levels`` tuples (ext 1) each holding the next, None inside."""
    data = msgpack.packb(None)
    for _ in range(levels):
        data = msgpack.packb(msgpack.ExtType(EXT_TUPLE, b"\x91" + data))
    return data


def nested(levels: int, kind: type = tuple) -> Any:
    value: Any = None
    for _ in range(levels):
        value = {"k": value} if kind is dict else kind([value])
    return value


def decode(payload: Any, frames: Any = ()) -> Any:
    """decode_value, asserting that it fails only with a ProtocolError."""
    try:
        return decode_value(payload, list(frames))
    except ProtocolError:
        return ProtocolError


# --------------------------------------------------------------------------- finding 1


_FINDING_1 = r"""
import threading
import msgpack
from pantheon import ProtocolError
from pantheon._wire import MsgType, decode_value, inproc_pair

def nested_tuples(levels):
    data = msgpack.packb(None)
    for _ in range(levels):
        data = msgpack.packb(msgpack.ExtType(1, b"\x91" + data))
    return data

def receive(conn, results):
    try:
        msg = conn.recv(timeout=30)
        decode_value(msg.header["value"], msg.frames)
        results.append("decoded")
    except ProtocolError as exc:
        results.append("ProtocolError " + str(exc)[:80])

for levels in (150, 200, 10_000):
    a, b = inproc_pair()
    results = []
    thread = threading.Thread(target=receive, args=(b, results))
    thread.start()
    a.send(MsgType.USER, {"value": nested_tuples(levels)})
    thread.join(60)
    print(levels, results[0] if results else "no result")
"""


def test_finding_1_nested_tuples_in_a_user_message_are_refused_not_a_crash() -> None:
    """200 nested tuples segfaulted a receiving thread (150 decoded); 10,000 too. Now every
    depth past MAX_DEPTH is a ProtocolError, in a thread, the process alive."""
    proc = run_isolated(_FINDING_1)
    assert proc.returncode == 0, f"the receiver crashed (status {proc.returncode}): {proc.stderr}"
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["150", "200", "10000"]
    for line in lines:
        assert "ProtocolError" in line and f"more than {MAX_DEPTH} levels" in line, line


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1_000, 1_025, 100_000])
@pytest.mark.parametrize("head", [b"\x91", b"\x81\xa1k"], ids=["arrays", "maps"])
def test_plain_nesting_past_the_limit_is_refused_in_a_thread(levels: int, head: bytes) -> None:
    payload = head * levels + b"\xc0"
    with pytest.raises(ProtocolError, match=f"more than {MAX_DEPTH} levels"):
        Runner(lambda: decode_value(payload, [])).join()


@pytest.mark.parametrize("kind", [tuple, list, dict])
def test_the_depth_limit_is_the_same_both_ways(kind: type) -> None:
    ok = nested(MAX_DEPTH, kind)
    payload, frames = encode_value(ok)
    assert decode_value(payload, frames) == ok
    with pytest.raises(ConfigError, match=rf"more than {MAX_DEPTH} levels deep .* at value\["):
        encode_value(nested(MAX_DEPTH + 1, kind))
    deeper = msgpack.packb(ok, default=lambda t: msgpack.ExtType(EXT_TUPLE, msgpack.packb(list(t))))
    wrapped = (b"\x91" + deeper) if kind is not tuple else nested_tuples(MAX_DEPTH + 1)
    with pytest.raises(ProtocolError, match=f"more than {MAX_DEPTH} levels"):
        decode_value(wrapped, [])


def test_the_encode_error_names_the_path() -> None:
    value = {"a": [1, (2, nested(MAX_DEPTH, list))]}
    with pytest.raises(ConfigError) as info:
        encode_value(value)
    assert "at value['a'][1][1]" in str(info.value)


def test_tuples_as_keys_and_mixed_nesting_still_round_trip() -> None:
    value = {(1, (2, 3)): [({"x": (np.arange(3),)},)], "s": np.float32(2.5)}
    payload, frames = encode_value(value)
    back = decode_value(payload, frames)
    assert list(back) == [(1, (2, 3)), "s"]
    assert back[(1, (2, 3))][0][0]["x"][0].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- fuzzing

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_ARRAYS = st.builds(
    lambda n, dt: np.arange(n).astype(dt),
    st.integers(0, 6),
    st.sampled_from(["int8", "int64", "float32", "bool", "float16"]),
)
_VALUES = st.recursive(
    st.one_of(_SCALARS, _ARRAYS, _ARRAYS.map(lambda a: a[:1].sum())),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
    ),
    max_leaves=20,
)


@fuzz_settings(300)
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_protocol_errors(data: bytes) -> None:
    decode(data)


@fuzz_settings(300)
@given(value=_VALUES, edits=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=4))
def test_mutated_payloads_decode_or_raise_protocol_errors(
    value: Any, edits: list[tuple[int, int]]
) -> None:
    payload, frames = encode_value(value)
    data = bytearray(payload)
    for at, byte in edits:
        if data:
            data[at % len(data)] = byte
    decode(bytes(data), [bytearray(np.asarray(f).tobytes()) for f in frames])


@fuzz_settings(200)
@given(value=_VALUES, cut=st.integers(0), extra=st.lists(st.integers(0, 64), max_size=2))
def test_cut_payloads_and_wrong_frames_raise_protocol_errors(
    value: Any, cut: int, extra: list[int]
) -> None:
    payload, frames = encode_value(value)
    raw = [bytearray(np.asarray(f).tobytes()) for f in frames]
    assert decode(payload[: cut % len(payload)], raw) is ProtocolError  # every prefix is cut
    if extra:  # frames the value does not use
        assert decode(payload, raw + [bytearray(n) for n in extra]) is ProtocolError


def _ext_tree(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """msgpack documents made of ext types of any code holding more msgpack, at any depth."""
    return st.builds(
        lambda code, item: msgpack.ExtType(code, msgpack.packb(item)),
        st.sampled_from([EXT_TUPLE, EXT_NDARRAY, EXT_SCALAR, 0, 4, 127]),
        children,
    )


_HOSTILE = st.recursive(
    st.one_of(
        _SCALARS,
        st.just(["float32", [2], 0]),
        st.just(["int8", [], b"\x01"]),
        st.just(["int8", b"\x01"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), _ext_tree(inner)),
    max_leaves=12,
)


@fuzz_settings(300)
@given(doc=_HOSTILE, frames=st.lists(st.binary(max_size=16), max_size=3))
def test_hostile_ext_trees_decode_or_raise_protocol_errors(doc: Any, frames: list[bytes]) -> None:
    payload = msgpack.packb(doc)
    decode(payload, [bytearray(f) for f in frames])


def test_a_deep_value_over_a_connection_is_a_protocol_error_and_the_link_survives() -> None:
    a, b = inproc_pair()
    with a, b:
        a.send(MsgType.USER, {"value": nested_tuples(10_000)})
        a.send(MsgType.USER, {"value": encode_value((1, 2))[0]})
        first = b.recv(timeout=10)
        with pytest.raises(ProtocolError):
            decode_value(first.header["value"], first.frames)
        second = b.recv(timeout=10)
        assert decode_value(second.header["value"], second.frames) == (1, 2)
