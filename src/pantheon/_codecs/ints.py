"""Lossless narrowing of integer knowledge: a narrower integer dtype, or bit-packing.

* :class:`IntCast` (``"int"``; strings ``"int8"``, ``"int16"``, ``"int32"``, ``"uint8"``,
  ``"uint16"``, ``"uint32"`` in ``codecs=``): an integer field stored in a narrower integer
  dtype, e.g. ``codecs={"input_ids": "int32"}`` (4 bytes per token instead of 8). Every batch
  is checked on write: a value the dtype cannot hold is refused with a
  :class:`~pantheon.KnowledgeError` naming it, never wrapped. Decoded: the field's own dtype.
* :class:`Packed` (``"packed"``): non-negative integers bit-packed at ``bits`` bits along the
  last axis (:mod:`pantheon._codecs.bits`), e.g. ``Packed.for_vocab(151_936)`` (18 bits) for
  token ids or top-k indices produced by a program: a field ``[n, ..., m]`` (or ragged
  ``[n, -1, m]``) is stored as ``uint8 [n, ..., ceil(m * bits / 8)]``; a field of scalars
  (``[n]`` or ragged ``[n, -1]``) as ``ceil(bits / 8)`` bytes per value. Values outside
  ``[0, 2**bits)`` are refused on write. Decoded: the field's own dtype and shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .._errors import ConfigError, KnowledgeError
from .._knowledge import FieldDesc, Value, to_dtype
from .base import Codec, register_codec
from .bits import MAX_BITS, bits_for, pack_bits, unpack_bits
from .sparse import inner, same_rows

__all__ = ["INT_DTYPES", "IntCast", "Packed"]

INT_DTYPES: tuple[str, ...] = ("int8", "int16", "int32", "int64", "uint8")
"""Description dtypes of integer fields."""
_NARROW = ("int8", "int16", "int32", "uint8", "uint16", "uint32")


def _check_int_field(name: str, key: str, field: FieldDesc) -> None:
    if field.get("dtype") not in INT_DTYPES:
        raise ConfigError(
            f"cannot store knowledge {key!r} ({field.get('dtype')}) with {name}: it applies to "
            f"integer fields ({', '.join(INT_DTYPES)}); remove the codec for {key!r}"
        )


class IntCast:
    """Store an integer field in a narrower integer dtype, checking the range on write.

    Args:
        dtype: ``"int8"``, ``"int16"``, ``"int32"``, ``"uint8"``, ``"uint16"`` or
            ``"uint32"``.
    """

    name: ClassVar[str] = "int"

    def __init__(self, dtype: str = "int32") -> None:
        if dtype not in _NARROW:
            raise ConfigError(f"IntCast stores integers as one of {list(_NARROW)}, got {dtype!r}")
        self.dtype = dtype
        self._np = np.dtype(dtype)

    def spec(self) -> dict[str, Any]:
        """``{"name": "int", "dtype": ...}``."""
        return {"name": self.name, "dtype": self.dtype}

    def check(self, key: str, field: FieldDesc) -> None:
        """Raise :class:`~pantheon.ConfigError` unless ``field`` holds integers."""
        _check_int_field(f"IntCast({self.dtype!r})", key, field)

    def encode(self, value: Value) -> dict[str, Value]:
        """``{"": value in the narrower dtype}``.

        Raises:
            KnowledgeError: a value outside the dtype's range (naming it and the range).
        """
        arr = inner(value)
        if arr.dtype.kind not in "iu":
            raise KnowledgeError(f"IntCast({self.dtype!r}): expected integers, got {arr.dtype}")
        info = np.iinfo(self._np)
        if arr.size:
            low, high = int(arr.min()), int(arr.max())
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise KnowledgeError(
                    f"the value {bad} does not fit in {self.dtype} ([{info.min}, {info.max}]); "
                    f"store this key with a wider codec (e.g. 'int32') or none ('none')"
                )
        return {"": same_rows(value, arr.astype(self._np))}

    def decode(self, parts: dict[str, Value], field: FieldDesc) -> Value:
        """The stored part in the field's own dtype."""
        value = parts[""]
        return same_rows(value, inner(value).astype(to_dtype(field["dtype"])))

    def __repr__(self) -> str:
        return f"IntCast({self.dtype!r})"


def _count(field: FieldDesc) -> int:
    """Values per packed row: the field's last axis, or 1 for a field of scalars."""
    shape = list(field["shape"])
    inner_dims = shape[2:] if field.get("lod_level", 0) else shape[1:]
    return int(inner_dims[-1]) if inner_dims else 1


class Packed:
    """Non-negative integers bit-packed at ``bits`` bits along the last axis (module docstring).

    Args:
        bits: 1 to 32 (``Packed.for_vocab(V)``: ``ceil(log2(V))``).
    """

    name: ClassVar[str] = "packed"

    def __init__(self, bits: int) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ConfigError(f"Packed: bits must be an int in [1, {MAX_BITS}], got {bits!r}")
        self.bits = bits

    @classmethod
    def for_vocab(cls, vocab_size: int) -> Packed:
        """Packed at ``ceil(log2(vocab_size))`` bits: ids or indices in ``[0, vocab_size)``."""
        try:
            return cls(bits_for(int(vocab_size)))
        except KnowledgeError as exc:
            raise ConfigError(f"Packed.for_vocab: {exc}") from None

    def spec(self) -> dict[str, Any]:
        """``{"name": "packed", "bits": ...}``."""
        return {"name": self.name, "bits": self.bits}

    def check(self, key: str, field: FieldDesc) -> None:
        """Raise :class:`~pantheon.ConfigError` unless ``field`` holds integers of a known last
        axis."""
        _check_int_field(f"Packed({self.bits})", key, field)
        if _count(field) < 0:
            raise ConfigError(
                f"cannot store knowledge {key!r} of shape {field['shape']} with Packed: its last "
                "axis must have a known length"
            )

    def encode(self, value: Value) -> dict[str, Value]:
        """``{"": uint8 packed rows}``.

        Raises:
            KnowledgeError: a value outside ``[0, 2**bits)``.
        """
        arr = inner(value)
        if arr.ndim == 1:
            arr = arr[..., None]  # a field of scalars ([n] or ragged [n, -1]): one value a row
        return {"": same_rows(value, pack_bits(arr, self.bits))}

    def decode(self, parts: dict[str, Value], field: FieldDesc) -> Value:
        """The values in the field's own dtype and shape."""
        value = parts[""]
        out = unpack_bits(inner(value), self.bits, _count(field), np.int64)
        shape = list(field["shape"])
        if len(shape) == (2 if field.get("lod_level", 0) else 1):
            out = out[..., 0]
        return same_rows(value, out.astype(to_dtype(field["dtype"])))

    def __repr__(self) -> str:
        return f"Packed({self.bits})"


def _int_from_spec(spec: Mapping[str, Any]) -> Codec:
    extra = sorted(set(spec) - {"name", "dtype"})
    if extra:
        raise ConfigError(f"the int codec takes only 'dtype', got also {extra} in {dict(spec)!r}")
    return IntCast(spec.get("dtype", "int32"))


def _packed_from_spec(spec: Mapping[str, Any]) -> Codec:
    if set(spec) != {"name", "bits"}:
        raise ConfigError(f"the packed codec takes exactly 'bits', got {dict(spec)!r}")
    return Packed(spec["bits"])


register_codec(IntCast.name, _int_from_spec)
register_codec(Packed.name, _packed_from_spec)
