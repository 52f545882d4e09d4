"""The cast codec: float knowledge stored as float16 or bfloat16, cast back when read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .._errors import ConfigError
from .._knowledge import FieldDesc, Ragged, Value, to_dtype
from .base import FLOAT_DTYPES, Codec, register_codec

__all__ = ["CAST_ALIASES", "Cast"]

CAST_ALIASES: dict[str, str] = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
"""Names a cast may be given by: alias -> dtype."""


class Cast:
    """Store float knowledge in a 16-bit float type; decode casts back to the original dtype.

    Args:
        dtype: ``"float16"`` (alias ``"fp16"``) or ``"bfloat16"`` (alias ``"bf16"``).
            float16 keeps ~3 significant digits and overflows to ``inf`` beyond +-65504;
            bfloat16 keeps the float32 range with ~2 significant digits.

    Only float fields (float16, bfloat16, float32, float64) can be cast; :meth:`check`
    raises a :class:`~pantheon.ConfigError` naming the key otherwise.
    """

    name: ClassVar[str] = "cast"

    def __init__(self, dtype: str = "float16") -> None:
        target = CAST_ALIASES.get(dtype) if isinstance(dtype, str) else None
        if target is None:
            raise ConfigError(
                f"Cast stores floats as 'float16' or 'bfloat16', got {dtype!r}; "
                "use Cast('float16') or Cast('bfloat16')"
            )
        self.dtype: str = target
        self._np_dtype = to_dtype(target)

    def spec(self) -> dict[str, Any]:
        """``{"name": "cast", "dtype": "float16" | "bfloat16"}``."""
        return {"name": self.name, "dtype": self.dtype}

    def check(self, key: str, field: FieldDesc) -> None:
        """Raise :class:`~pantheon.ConfigError` unless ``field`` holds floats."""
        if field.get("dtype") not in FLOAT_DTYPES:
            raise ConfigError(
                f"cannot store knowledge {key!r} ({field.get('dtype')}) with Cast({self.dtype!r}): "
                f"casts apply to float fields only ({', '.join(sorted(FLOAT_DTYPES))}); "
                f"remove the codec for {key!r}"
            )

    def encode(self, value: Value) -> dict[str, Value]:
        """``{"": value cast to the 16-bit type}`` (no copy if it already has it)."""
        if isinstance(value, Ragged):
            return {"": value.astype(self._np_dtype)}
        return {"": value.astype(self._np_dtype, copy=False)}

    def decode(self, parts: dict[str, Value], field: FieldDesc) -> Value:
        """The stored part cast back to ``field["dtype"]`` (a new array unless dtypes agree)."""
        value = parts[""]
        dtype = to_dtype(field["dtype"])
        if isinstance(value, Ragged):
            return value.astype(dtype)
        return value.astype(dtype, copy=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cast) and other.dtype == self.dtype

    def __hash__(self) -> int:
        return hash((Cast, self.dtype))

    def __repr__(self) -> str:
        return f"Cast({self.dtype!r})"


def _cast_from_spec(spec: Mapping[str, Any]) -> Codec:
    extra = sorted(set(spec) - {"name", "dtype"})
    if extra:
        raise ConfigError(f"the cast codec takes only 'dtype', got also {extra} in {dict(spec)!r}")
    return Cast(spec.get("dtype", "float16"))


register_codec(Cast.name, _cast_from_spec)
