"""No-pickle encoding of user values and of knowledge chunks for the wire.

**Values** (``Teacher.send`` / ``Student.send``): None, bool, int (-2**63 .. 2**64-1), float,
str, bytes, list, tuple, set, frozenset, dict and numpy arrays or scalars, nested (framework
tensors, torch or paddle, travel as numpy arrays). :func:`encode_value` gives a msgpack
payload (``bytes``, to put in a message header) and the arrays' frames, sent without copies.
msgpack extension types carry what msgpack lacks:

==========  ==========================================================================
ext code    payload (itself msgpack)
==========  ==========================================================================
1 tuple     the items as an array
2 ndarray   ``[dtype name, shape, frame index]``; the data is that frame (C order)
3 scalar    ``[dtype name, raw bytes]``: a numpy scalar such as ``np.float32(1.5)``
4 set       the items as an array (each item hashable: no list, dict or array)
5 frozenset the items as an array, as for a set
==========  ==========================================================================

Arrays travel in little-endian byte order; received arrays are views of the frames (no copy)
after their sizes were checked against dtype and shape. Lists, tuples and dicts nest at most
:data:`MAX_DEPTH` levels, checked before each level is entered on both sides: a deeper value
is a ``ConfigError`` when sending and a ``ProtocolError`` when receiving, never a crash.
Knowledge chunks have their own encoding (:mod:`.chunks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from .._errors import ConfigError, KnowledgeError, ProtocolError
from .._knowledge import DTYPE_NAMES, dtype_name, to_dtype, to_numpy
from .._util import short_repr

__all__ = [
    "EXT_FROZENSET",
    "EXT_NDARRAY",
    "EXT_SCALAR",
    "EXT_SET",
    "EXT_TUPLE",
    "MAX_DEPTH",
    "array_view",
    "as_frame",
    "decode_value",
    "encode_value",
    "wire_array",
]

EXT_TUPLE = 1
EXT_NDARRAY = 2
EXT_SCALAR = 3
EXT_SET = 4
EXT_FROZENSET = 5

MAX_DEPTH = 64
"""Most levels of lists, tuples and dicts in one value (``[[1]]`` has 2): deeper values are
refused when encoding (``ConfigError`` naming where) and when decoding (``ProtocolError``),
before the level is entered, so a hostile message cannot exhaust the stack."""

_ALLOWED = (
    "None, bool, int, float, str, bytes, list, tuple, set, frozenset, dict and numpy arrays "
    "(or torch / paddle tensors) or scalars of dtype " + ", ".join(DTYPE_NAMES)
)
_DTYPES = {name: to_dtype(name) for name in DTYPE_NAMES}
_NAME_OF = {dt: name for name, dt in _DTYPES.items()}
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class _Unsupported(Exception):
    """Raised inside msgpack's ``default`` hook; turned into a ConfigError with a path."""


def as_frame(arr: np.ndarray, name: str) -> np.ndarray:
    """The array as a frame: C-contiguous (copied only if it is not), exporting a buffer."""
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if name == "bfloat16":  # ml_dtypes arrays cannot export a buffer: send the bits
        return arr.view(np.uint16)
    return arr


def wire_array(arr: np.ndarray) -> tuple[str, np.ndarray]:
    """Its dtype name and the array in native (little-endian) byte order.

    Raises:
        KnowledgeError: a dtype outside :data:`~pantheon._knowledge.DTYPE_NAMES`.
    """
    name = _NAME_OF.get(arr.dtype)
    if name is None:
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        name = dtype_name(arr.dtype)
    return name, arr


# -- values --------------------------------------------------------------------------------


def encode_value(obj: Any) -> tuple[bytes, list[np.ndarray]]:
    """Encode a user value: a msgpack payload and the frames of its arrays (no copies).

    Raises:
        ConfigError: a value of another type (set, object, ...), an int out of range or a
            structure nested more than :data:`MAX_DEPTH` levels deep; the message says the
            type and where it is.
    """
    if isinstance(obj, _NESTING):
        _check_depth(obj, 0, "value")
    frames: list[np.ndarray] = []

    def default(o: Any) -> Any:
        if isinstance(o, tuple):
            return msgpack.ExtType(EXT_TUPLE, _pack(list(o)))
        if isinstance(o, np.ndarray):
            try:
                name, arr = wire_array(o)
            except KnowledgeError:
                raise _Unsupported from None
            frames.append(as_frame(arr, name))
            return msgpack.ExtType(EXT_NDARRAY, _pack([name, list(arr.shape), len(frames) - 1]))
        if isinstance(o, np.generic):
            try:
                name, arr = wire_array(np.asarray(o))
            except KnowledgeError:
                raise _Unsupported from None
            return msgpack.ExtType(EXT_SCALAR, _pack([name, arr.tobytes()]))
        if isinstance(o, (set, frozenset)):
            code = EXT_FROZENSET if isinstance(o, frozenset) else EXT_SET
            return msgpack.ExtType(code, _pack(list(o)))
        tensor = _tensor_array(o)
        if tensor is not None:
            return default(tensor)
        return _base_type(o)

    def _pack(o: Any) -> bytes:
        return msgpack.packb(o, default=default, strict_types=True, use_bin_type=True)  # type: ignore[no-any-return]

    try:
        payload = _pack(obj)
    except (_Unsupported, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _unsupported_error(obj, exc) from None
    return payload, frames


def _tensor_array(o: Any) -> np.ndarray | None:
    """A framework tensor (torch, paddle) as a numpy array, None for anything else."""
    if isinstance(o, (str, bytes, list, tuple, dict, int, float)):
        return None
    try:
        arr = to_numpy(o)
    except Exception:  # an object that only looks like a tensor
        return None
    return arr if isinstance(arr, np.ndarray) and arr is not o else None


_NESTING = (list, tuple, dict, set, frozenset)
_LEAVES = frozenset(
    {type(None), bool, int, float, str, bytes, np.ndarray, *(dt.type for dt in _DTYPES.values())}
)  # exact types that hold no nested value: whole lists of them are skipped at C speed


def _check_depth(obj: Any, depth: int, where: str) -> None:
    """Raise a ConfigError naming where the container ``obj`` (at nesting ``depth``, 0 for
    the value itself) holds containers deeper than :data:`MAX_DEPTH`."""
    if depth >= MAX_DEPTH:
        raise ConfigError(
            f"cannot send the value: it nests lists, tuples and dicts more than {MAX_DEPTH} "
            f"levels deep (MAX_DEPTH) at {where}; flatten it or send an array"
        )
    if isinstance(obj, dict):
        if not _LEAVES.issuperset(map(type, obj)):
            for key in obj:
                if isinstance(key, _NESTING):
                    _check_depth(key, depth + 1, f"a key of {where}")
        if not _LEAVES.issuperset(map(type, obj.values())):
            for key, item in obj.items():
                if isinstance(item, _NESTING):
                    _check_depth(item, depth + 1, f"{where}[{key!r:.40}]")
    elif not _LEAVES.issuperset(map(type, obj)):
        for i, item in enumerate(obj):
            if isinstance(item, _NESTING):
                _check_depth(item, depth + 1, f"{where}[{i}]")


def _base_type(o: Any) -> Any:
    """A subclass of an allowed type (OrderedDict, IntEnum, ...) as its base type."""
    if isinstance(o, dict):
        return dict(o)
    if isinstance(o, list):
        return list(o)
    if isinstance(o, str):
        return str(o)
    if isinstance(o, bytes):
        return bytes(o)
    if isinstance(o, float):
        return float(o)
    if isinstance(o, int):
        return int(o)
    raise _Unsupported


def _unsupported_error(obj: Any, exc: BaseException) -> ConfigError:
    found = _find_unsupported(obj, "value", 0)
    if found is None:
        return ConfigError(
            f"cannot encode the value: {exc or type(exc).__name__}; allowed: {_ALLOWED}"
        )
    where, what = found
    return ConfigError(
        f"cannot send {what} at {where}: allowed are {_ALLOWED} (never pickled objects)"
    )


def _find_unsupported(o: Any, where: str, depth: int) -> tuple[str, str] | None:
    """The first place in ``o`` that cannot be encoded, as (path, description)."""
    if depth > MAX_DEPTH:
        return where, f"a structure nested more than {MAX_DEPTH} levels deep"
    if o is None or isinstance(o, (bool, float, str, bytes, bytearray, memoryview)):
        return None
    if isinstance(o, int):
        return (
            None if _INT_MIN <= o <= _INT_MAX else (where, f"the int {o} (outside -2**63..2**64-1)")
        )
    if isinstance(o, (np.ndarray, np.generic)):
        try:
            wire_array(np.asarray(o))
        except KnowledgeError:
            return where, f"a numpy {type(o).__name__} of dtype {o.dtype}"
        return None
    if isinstance(o, (list, tuple)):
        for i, item in enumerate(o):
            found = _find_unsupported(item, f"{where}[{i}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(o, (set, frozenset)):
        for item in o:
            found = _find_unsupported(item, f"an item of {where}", depth + 1)
            if found:
                return found
        return None
    if isinstance(o, dict):
        for key, item in o.items():
            found = _find_unsupported(key, f"a key of {where}", depth + 1) or _find_unsupported(
                item, f"{where}[{key!r}]", depth + 1
            )
            if found:
                return found
        return None
    tensor = _tensor_array(o)
    if tensor is not None:
        return _find_unsupported(tensor, where, depth + 1)
    kind = type(o)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return where, f"a {name} object"


def decode_value(payload: Any, frames: Sequence[Any]) -> Any:
    """Decode what :func:`encode_value` produced; arrays are views of ``frames``.

    Decoding never recurses on the C stack: msgpack decodes one level of ext types at a time
    (a tuple's items stay undecoded until their container is reached), and every list, map
    and tuple is counted against :data:`MAX_DEPTH` before it is entered.

    Raises:
        ProtocolError: a malformed payload, a value nested more than :data:`MAX_DEPTH`
            levels deep, an unknown ext type, a bad frame index, a frame whose size does not
            match its array's dtype and shape, or unused frames.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a value payload must be msgpack bytes, got {type(payload).__name__}")
    decoder = _Decoder(frames)
    try:
        value = decoder.resolve(decoder.unpack(payload), 0)
    except ProtocolError:
        raise
    except msgpack.StackError:  # plain msgpack nesting past msgpack's own limit (1024)
        raise _too_deep("a list or map") from None
    except Exception as exc:  # msgpack raises several unrelated classes on bad input
        raise ProtocolError(f"malformed value payload: {type(exc).__name__}: {exc}") from None
    if len(decoder.used) != len(frames):
        raise ProtocolError(
            f"the value uses {len(decoder.used)} of the message's {len(frames)} frames"
        )
    return value


class _Nested:
    """A container ext (a tuple) whose msgpack items are not decoded yet."""

    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes) -> None:
        self.code = code
        self.data = data


def _build_set(code: int) -> Callable[[list[Any]], Any]:
    kind = frozenset if code == EXT_FROZENSET else set

    def build(items: list[Any]) -> Any:
        try:
            return kind(items)
        except TypeError:
            raise ProtocolError(
                f"a set (ext {code}) holds an unhashable item (a list, dict or array)"
            ) from None

    return build


_CONTAINERS: dict[int, tuple[str, Callable[[list[Any]], Any]]] = {
    EXT_TUPLE: ("tuple", tuple),
    EXT_SET: ("set", _build_set(EXT_SET)),
    EXT_FROZENSET: ("frozenset", _build_set(EXT_FROZENSET)),
}
"""Container ext types: code -> (name, how the decoded list of items becomes the value)."""


def _too_deep(what: str) -> ProtocolError:
    return ProtocolError(
        f"malformed value payload: {what} nested more than {MAX_DEPTH} levels deep "
        f"(MAX_DEPTH); the sender must flatten the value"
    )


class _Decoder:
    """One value's decoding: msgpack one ext level at a time, then an explicit walk."""

    def __init__(self, frames: Sequence[Any]) -> None:
        self.frames = frames
        self.used: set[int] = set()

    def unpack(self, data: Any) -> Any:
        """One msgpack document; container exts stay :class:`_Nested` (no recursion)."""
        return msgpack.unpackb(
            data, ext_hook=self.ext_hook, raw=False, strict_map_key=False, use_list=True
        )

    def ext_hook(self, code: int, data: bytes) -> Any:
        if code in _CONTAINERS:
            return _Nested(code, data)
        if code == EXT_NDARRAY:
            spec = _unpack_leaf(data)
            if not (isinstance(spec, list) and len(spec) == 3 and type(spec[2]) is int):
                raise ProtocolError(
                    f"an array (ext 2) must be [dtype, shape, frame], got {short_repr(spec, 100)}"
                )
            index = spec[2]
            if not 0 <= index < len(self.frames) or index in self.used:
                raise ProtocolError(
                    f"array refers to frame {index}; the message has {len(self.frames)}"
                )
            self.used.add(index)
            return array_view(self.frames[index], spec[0], spec[1], f"array in frame {index}")
        if code == EXT_SCALAR:
            spec = _unpack_leaf(data)
            if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], bytes)):
                raise ProtocolError(
                    f"a scalar (ext 3) must be [dtype, bytes], got {short_repr(spec, 100)}"
                )
            return array_view(spec[1], spec[0], [], "numpy scalar")[()]
        raise ProtocolError(f"unknown msgpack ext type {code} in a value")

    def resolve(self, obj: Any, depth: int) -> Any:
        """``obj`` (at nesting ``depth``) with every :class:`_Nested` inside it decoded."""
        kind = type(obj)
        if kind is _Nested:
            items = self.unpack(obj.data)
            name, build = _CONTAINERS[obj.code]
            if type(items) is not list:
                raise ProtocolError(f"a {name} (ext {obj.code}) must hold a msgpack array")
            return build(self.resolve(items, depth))
        if kind is not list and kind is not dict:
            return obj
        if depth >= MAX_DEPTH:
            raise _too_deep("a list, map or tuple")
        if kind is list:
            if not _WALKED.isdisjoint(map(type, obj)):
                for i, item in enumerate(obj):
                    if type(item) in _WALKED:
                        obj[i] = self.resolve(item, depth + 1)
            return obj
        if not _WALKED.isdisjoint(map(type, obj.values())):
            for key, item in obj.items():
                if type(item) in _WALKED:
                    obj[key] = self.resolve(item, depth + 1)
        if not _KEYS_WALKED.isdisjoint(
            map(type, obj)
        ):  # tuples as keys: decode them, keeping the order
            return {self.resolve(key, depth + 1): item for key, item in obj.items()}
        return obj


_WALKED = frozenset({list, dict, _Nested})  # what resolve() enters
_KEYS_WALKED = frozenset({_Nested})  # map keys it decodes (containers as keys: tuples)


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"ext type {code} inside an array or scalar description")


def _unpack_leaf(data: bytes) -> Any:
    """The msgpack description of an array or scalar: plain msgpack, no ext types."""
    return msgpack.unpackb(data, ext_hook=_no_ext, raw=False, use_list=True)


def array_view(frame: Any, dtype: Any, shape: Any, what: str) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` viewing ``frame`` (no copy), after checking sizes."""
    dt = _DTYPES.get(dtype) if type(dtype) is str else None
    if dt is None:
        raise ProtocolError(
            f"{what}: unsupported dtype {dtype!r}; expected one of {', '.join(DTYPE_NAMES)}"
        )
    if type(shape) is not list:
        raise ProtocolError(
            f"{what}: shape must be a list of ints >= 0, got {short_repr(shape, 100)}"
        )
    for d in shape:
        if type(d) is not int or d < 0:
            raise ProtocolError(
                f"{what}: shape must be a list of ints >= 0, got {short_repr(shape, 100)}"
            )
    view = frame if type(frame) is memoryview else memoryview(frame)
    want = dt.itemsize * math.prod(shape)
    if view.nbytes != want:
        raise ProtocolError(
            f"{what}: {view.nbytes} bytes do not match dtype {dtype} and shape {shape} "
            f"({want} bytes)"
        )
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B") if want else memoryview(b"")
    try:
        arr: np.ndarray = np.ndarray(shape, dt, view)
    except ValueError as exc:  # more dimensions, or a larger shape, than numpy supports
        raise ProtocolError(
            f"{what}: shape {short_repr(shape, 100)} is not possible: {exc}"
        ) from None
    return arr
