"""No-pickle values and knowledge chunks: round trips, zero copies, validation."""

from __future__ import annotations

import collections
import enum
import math
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pantheon import ConfigError, ProtocolError
from pantheon._knowledge import DTYPE_NAMES, to_dtype
from pantheon._wire import MsgType, decode_value, encode_value, inproc_pair
from pantheon._wire.values import EXT_FROZENSET, EXT_NDARRAY, EXT_SET, EXT_TUPLE

DTYPES = [to_dtype(n) for n in DTYPE_NAMES]


def same(a: Any, b: Any) -> bool:
    """Structural equality that also checks container types, dtypes and NaNs."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def roundtrip(obj: Any) -> Any:
    payload, frames = encode_value(obj)
    # frames travel as raw bytes: decode from fresh writable copies, as a receiver would
    return decode_value(payload, [memoryview(bytearray(np.asarray(f).tobytes())) for f in frames])


def arrays() -> st.SearchStrategy[np.ndarray]:
    def build(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int) -> np.ndarray:
        raw = np.random.default_rng(seed).integers(0, 256, size=math.prod(shape) * dtype.itemsize)
        arr = raw.astype(np.uint8).view(dtype).reshape(shape)
        return arr if dtype != np.bool_ else arr.view(np.uint8).astype(bool)

    return st.builds(
        build,
        st.sampled_from(DTYPES),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
        st.integers(0, 2**32 - 1),
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
keys = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=10)
    | st.binary(max_size=5)
)
values = st.recursive(
    scalars | arrays(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_values_round_trip(obj: Any) -> None:
    assert same(roundtrip(obj), obj)


@given(arrays())
@settings(max_examples=100, deadline=None)
def test_arrays_are_sent_without_copies_and_decoded_as_views(arr: np.ndarray) -> None:
    payload, frames = encode_value(arr)
    assert len(frames) == 1
    if arr.size:
        assert np.shares_memory(frames[0], arr)
    buf = bytearray(np.asarray(frames[0]).tobytes())
    got = decode_value(payload, [memoryview(buf)])
    assert same(got, arr)
    if arr.size:
        assert np.shares_memory(got, np.frombuffer(buf, np.uint8))
        assert got.flags.writeable


def test_tuples_stay_tuples_and_lists_stay_lists() -> None:
    obj = {"t": (1, (2, [3, (4,)])), "l": [(), []], (1, "k"): "tuple key"}
    got = roundtrip(obj)
    assert same(got, obj)
    assert type(got["t"][1][1][1]) is tuple


def test_numpy_scalars_and_zero_d_arrays() -> None:
    obj = [np.float32(1.5), np.int64(-3), np.bool_(True), np.array(2.5), np.float16(0.1)]
    got = roundtrip(obj)
    assert same(got, obj)
    assert isinstance(got[0], np.float32)
    assert got[3].shape == ()


def test_non_contiguous_and_big_endian_arrays() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = base[:, ::2].T
    got = roundtrip({"v": view, "be": np.arange(4, dtype=">i4")})
    assert np.array_equal(got["v"], view)
    assert got["v"].flags.c_contiguous
    assert np.array_equal(got["be"], [0, 1, 2, 3])
    assert got["be"].dtype == np.int32


def test_bfloat16_and_empty_arrays() -> None:
    obj = {
        "bf": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(3, 2),
        "empty": np.zeros((0, 7), np.int16),
    }
    assert same(roundtrip(obj), obj)


hashables = st.recursive(
    keys | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.sets(hashables, max_size=6) | st.frozensets(hashables, max_size=6))
def test_sets_and_frozensets_round_trip(obj: Any) -> None:
    got = roundtrip(obj)
    assert type(got) is type(obj)
    assert got == obj


def test_sets_as_the_seed_sends_them() -> None:
    """The seed's toy sends ``{3, 5}`` and ``{1, 2, 3}``; sets nest in dicts, frozensets key them."""
    obj = {"a": {3, 5}, frozenset({1, 2}): [{1, 2, 3}], "e": set(), "t": {(1, "x"), None}}
    got = roundtrip(obj)
    assert got == obj
    assert type(got["a"]) is set and type(list(got)[1]) is frozenset
    payload, frames = encode_value({3, 5})
    assert not frames
    raw = msgpack.unpackb(payload, ext_hook=lambda code, data: (code, msgpack.unpackb(data)))
    assert raw[0] == EXT_SET and sorted(raw[1]) == [3, 5]


def test_torch_tensors_travel_as_arrays() -> None:
    torch = pytest.importorskip("torch")
    got = roundtrip({"t": torch.arange(3), "bf": torch.ones(2, dtype=torch.bfloat16)})
    assert same(got["t"], np.arange(3))
    assert got["bf"].dtype == ml_dtypes.bfloat16


def test_subclasses_of_allowed_types_become_the_base_type() -> None:
    class Color(enum.IntEnum):
        RED = 1

    obj = {"od": collections.OrderedDict(a=1), "enum": Color.RED}
    got = roundtrip(obj)
    assert got == {"od": {"a": 1}, "enum": 1}
    assert type(got["od"]) is dict
    assert type(got["enum"]) is int


@pytest.mark.parametrize(
    ("obj", "where", "what"),
    [
        ({1, 2j}, "at an item of value:", "a complex object"),
        ({"a": [1, object()]}, r"at value\['a'\]\[1\]", "a object object"),
        ([None, (1, {"k": 1j})], r"at value\[1\]\[1\]\['k'\]", "a complex object"),
        ({"x": np.array(["s"])}, r"at value\['x'\]", "dtype <U1"),
        ({1j: 1}, "at a key of value", "complex"),
        ([2**64], r"at value\[0\]", "outside"),
        (np.complex64(1), "at value", "complex64"),
    ],
)
def test_unsupported_values_say_what_and_where(obj: Any, where: str, what: str) -> None:
    with pytest.raises(ConfigError, match=where) as info:
        encode_value(obj)
    assert what in str(info.value)
    assert "allowed are None, bool, int" in str(info.value)


def test_too_deep_nesting_is_a_config_error() -> None:
    obj: Any = []
    for _ in range(2000):
        obj = [obj]
    with pytest.raises(ConfigError):
        encode_value(obj)


def ext(code: int, obj: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(obj))


@pytest.mark.parametrize(
    ("payload", "frames", "match"),
    [
        (msgpack.packb(ext(EXT_NDARRAY, ["float32", [3], 0])), [bytearray(8)], "do not match"),
        (msgpack.packb(ext(EXT_NDARRAY, ["float32", [2], 1])), [bytearray(8)], "refers to frame 1"),
        (msgpack.packb(ext(EXT_NDARRAY, ["object", [1], 0])), [bytearray(8)], "unsupported dtype"),
        (msgpack.packb(ext(EXT_NDARRAY, ["int8", [-1], 0])), [bytearray(1)], "shape must be"),
        (msgpack.packb(ext(EXT_NDARRAY, "nonsense")), [], "must be"),
        (
            msgpack.packb([ext(EXT_NDARRAY, ["int8", [1], 0])] * 2),
            [bytearray(1)],
            "refers to frame 0",
        ),
        (msgpack.packb(ext(EXT_TUPLE, {"a": 1})), [], "tuple"),
        (msgpack.packb(ext(EXT_SET, {"a": 1})), [], "set"),
        (msgpack.packb(ext(EXT_SET, [[1, 2]])), [], "unhashable"),
        (msgpack.packb(ext(EXT_FROZENSET, [{"a": 1}])), [], "unhashable"),
        (msgpack.packb(ext(99, 1)), [], "unknown msgpack ext type 99"),
        (msgpack.packb(1), [bytearray(4)], "uses 0 of the message's 1 frames"),
        (b"\xc1", [], "malformed"),
        (b"\x92\x01", [], "malformed"),
        ("not bytes", [], "must be msgpack bytes"),
        (None, [], "must be msgpack bytes"),
    ],
)
def test_bad_value_payloads_are_protocol_errors(
    payload: Any, frames: list[Any], match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_value(payload, frames)


def test_value_over_a_connection() -> None:
    a, b = inproc_pair()
    with a, b:
        obj = {"loss": np.float32(0.25), "grads": [np.ones((2, 3)), np.arange(4)], "tag": ("a", 1)}
        payload, frames = encode_value(obj)
        a.send(MsgType.USER, {"value": payload}, frames)
        msg = b.recv(timeout=10)
        assert same(decode_value(msg.header["value"], msg.frames), obj)
