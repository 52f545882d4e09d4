"""No-pickle encoding of user values and of knowledge chunks for the wire.

**Values** (``Teacher.send`` / ``Student.send``): None, bool, int (-2**63 .. 2**64-1), float,
str, bytes, list, tuple, set, frozenset, dict and numpy arrays or scalars, nested (framework
tensors, torch or paddle, travel as numpy arrays). :func:`encode_value` gives
a msgpack payload (``bytes``, to put in a message header) and the arrays' frames, sent without
copies. msgpack extension types carry what msgpack lacks:

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
after their sizes were checked against dtype and shape. Knowledge chunks have their own
encoding (:mod:`.chunks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from .._errors import ConfigError, KnowledgeError, ProtocolError
from .._knowledge import DTYPE_NAMES, dtype_name, to_dtype, to_numpy

__all__ = [
    "EXT_FROZENSET",
    "EXT_NDARRAY",
    "EXT_SCALAR",
    "EXT_SET",
    "EXT_TUPLE",
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
            structure nested too deeply; the message says the type and where it is.
    """
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
    if depth > 500:
        return where, "a structure nested more than 500 levels deep"
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

    Raises:
        ProtocolError: a malformed payload, an unknown ext type, a bad frame index, a frame
            whose size does not match its array's dtype and shape, or unused frames.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a value payload must be msgpack bytes, got {type(payload).__name__}")
    used: set[int] = set()

    def ext_hook(code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            items = _unpack(data)
            if not isinstance(items, list):
                raise ProtocolError("a tuple (ext 1) must hold a msgpack array")
            return tuple(items)
        if code == EXT_NDARRAY:
            spec = _unpack(data)
            if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[2], int)):
                raise ProtocolError(
                    f"an array (ext 2) must be [dtype, shape, frame], got {spec!r:.100}"
                )
            index = spec[2]
            if not 0 <= index < len(frames) or index in used:
                raise ProtocolError(f"array refers to frame {index}; the message has {len(frames)}")
            used.add(index)
            return array_view(frames[index], spec[0], spec[1], f"array in frame {index}")
        if code in (EXT_SET, EXT_FROZENSET):
            return _decode_set(code, _unpack(data))
        if code == EXT_SCALAR:
            spec = _unpack(data)
            if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], bytes)):
                raise ProtocolError(f"a scalar (ext 3) must be [dtype, bytes], got {spec!r:.100}")
            return array_view(spec[1], spec[0], [], "numpy scalar")[()]
        raise ProtocolError(f"unknown msgpack ext type {code} in a value")

    def _unpack(data: Any) -> Any:
        return msgpack.unpackb(
            data, ext_hook=ext_hook, raw=False, strict_map_key=False, use_list=True
        )

    try:
        value = _unpack(payload)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated classes on bad input
        raise ProtocolError(f"malformed value payload: {type(exc).__name__}: {exc}") from None
    if len(used) != len(frames):
        raise ProtocolError(f"the value uses {len(used)} of the message's {len(frames)} frames")
    return value


def _decode_set(code: int, items: Any) -> set[Any] | frozenset[Any]:
    """The set (ext 4) or frozenset (ext 5) of decoded ``items``.

    Raises:
        ProtocolError: items that are not a msgpack array, or an unhashable item.
    """
    if not isinstance(items, list):
        raise ProtocolError(f"a set (ext {code}) must hold a msgpack array")
    try:
        return frozenset(items) if code == EXT_FROZENSET else set(items)
    except TypeError:
        raise ProtocolError(
            f"a set (ext {code}) holds an unhashable item (a list, dict or array)"
        ) from None


def array_view(frame: Any, dtype: Any, shape: Any, what: str) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` viewing ``frame`` (no copy), after checking sizes."""
    dt = _DTYPES.get(dtype) if type(dtype) is str else None
    if dt is None:
        raise ProtocolError(
            f"{what}: unsupported dtype {dtype!r}; expected one of {', '.join(DTYPE_NAMES)}"
        )
    if type(shape) is not list:
        raise ProtocolError(f"{what}: shape must be a list of ints >= 0, got {shape!r:.100}")
    for d in shape:
        if type(d) is not int or d < 0:
            raise ProtocolError(f"{what}: shape must be a list of ints >= 0, got {shape!r:.100}")
    view = frame if type(frame) is memoryview else memoryview(frame)
    want = dt.itemsize * math.prod(shape)
    if view.nbytes != want:
        raise ProtocolError(
            f"{what}: {view.nbytes} bytes do not match dtype {dtype} and shape {shape} "
            f"({want} bytes)"
        )
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B") if want else memoryview(b"")
    arr: np.ndarray = np.ndarray(shape, dt, view)
    return arr
