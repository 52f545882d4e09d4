"""Per-key codecs: how a knowledge field is stored on disk and sent on the wire.

A codec turns one field (a numpy array or a :class:`~pantheon._knowledge.Ragged` field) into
one or more *stored parts* and back. Each part has a suffix; the part with suffix ``""`` is
stored under the key itself, a part with suffix ``s`` in the column (or wire field)
``f"{key}@{s}"``. A codec describes itself with a JSON-able :meth:`Codec.spec` that carries
its ``"name"``; readers rebuild it with :func:`codec_from_spec`, which only looks names up in
a registry of built-in codecs (it never imports or runs code named by a file).

Built in: :class:`Cast` (name ``"cast"``), float knowledge stored as float16 or bfloat16; the
description keeps the original dtype and :meth:`Cast.decode` casts back.

Example::

    codecs = resolve_codecs(desc, {"logits": "bfloat16"}, use_fp16=False)
    parts = codecs["logits"].encode(batch["logits"])      # {"": bfloat16 array}
    back = codecs["logits"].decode(parts, desc["logits"])  # float32 again
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from ._errors import ConfigError
from ._knowledge import Description, FieldDesc, Ragged, Value, to_dtype

__all__ = [
    "FLOAT_DTYPES",
    "Cast",
    "Codec",
    "CodecFactory",
    "codec_from_spec",
    "column_name",
    "decode_field",
    "register_codec",
    "registered_codecs",
    "resolve_codecs",
]

FLOAT_DTYPES: frozenset[str] = frozenset({"float16", "bfloat16", "float32", "float64"})
"""Description dtypes that :class:`Cast` accepts."""


@runtime_checkable
class Codec(Protocol):
    """How one knowledge field is stored: ``encode`` to named parts, ``decode`` back.

    Implementations may also define ``check(key, field) -> None`` that raises
    :class:`~pantheon.ConfigError` when the codec cannot store a field of that description;
    :func:`resolve_codecs` calls it when present.
    """

    def spec(self) -> dict[str, Any]:
        """A JSON-able description with a ``"name"`` that :func:`codec_from_spec` rebuilds."""
        ...

    def encode(self, value: Value) -> dict[str, Value]:
        """The stored parts of one field: suffix -> value (``""``: stored under the key)."""
        ...

    def decode(self, parts: dict[str, Value], field: FieldDesc) -> Value:
        """Rebuild the field from its parts, with the dtype and shape of ``field``."""
        ...


CodecFactory = Callable[[Mapping[str, Any]], Codec]
"""Builds a codec from its spec (the dict :meth:`Codec.spec` returned)."""

_REGISTRY: dict[str, CodecFactory] = {}
_BUILTIN_MODULES: dict[str, str] = {"topk": "._topk"}
"""Built-in codecs defined in other modules of this package, imported on first use."""


def column_name(key: str, suffix: str) -> str:
    """The column (or wire field) of a stored part: ``key`` or ``f"{key}@{suffix}"``."""
    return key if suffix == "" else f"{key}@{suffix}"


def register_codec(name: str, factory: CodecFactory) -> None:
    """Make a codec known to :func:`codec_from_spec` under ``name``.

    Args:
        name: the ``"name"`` its spec carries.
        factory: called with the spec (a mapping) to build the codec.

    Raises:
        ConfigError: ``name`` is empty or already registered (a registry never overwrites).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a codec name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ConfigError(
            f"a codec named {name!r} is already registered; choose another name "
            "(registered codecs are never replaced)"
        )
    if not callable(factory):
        raise ConfigError(f"the factory of codec {name!r} must be callable, got {factory!r}")
    _REGISTRY[name] = factory


def registered_codecs() -> tuple[str, ...]:
    """The names :func:`codec_from_spec` knows, sorted."""
    return tuple(sorted(_REGISTRY))


def codec_from_spec(spec: Mapping[str, Any]) -> Codec:
    """Rebuild a codec from its spec (as stored in a knowledge file or sent on the wire).

    Only codecs registered with :func:`register_codec` can be built; nothing is imported or run.

    Raises:
        ConfigError: ``spec`` is not a mapping with a string ``"name"``, the name is not
            registered, or the codec refuses the spec's parameters.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"a codec spec must be a mapping with a string 'name', got {spec!r}; "
            'e.g. {"name": "cast", "dtype": "float16"}'
        )
    name = spec["name"]
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(_BUILTIN_MODULES[name], __package__)
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(
            f"unknown codec {name!r}: known codecs are {', '.join(registered_codecs())}. "
            "A codec from a newer Pantheon or a plug-in must be registered with "
            "pantheon._codec.register_codec before use"
        )
    return factory(spec)


class Cast:
    """Store float knowledge in a 16-bit float type; decode casts back to the original dtype.

    Args:
        dtype: ``"float16"`` (alias ``"fp16"``) or ``"bfloat16"`` (alias ``"bf16"``).
            float16 keeps ~3 significant digits and overflows to ``inf`` beyond +-65504;
            bfloat16 keeps the float32 range with ~2 significant digits.

    Only float fields (float16, bfloat16, float32, float64) can be cast; :meth:`check`
    raises a :class:`~pantheon.ConfigError` naming the key otherwise.
    """

    name = "cast"
    _ALIASES: ClassVar[dict[str, str]] = {
        "float16": "float16",
        "fp16": "float16",
        "half": "float16",
        "bfloat16": "bfloat16",
        "bf16": "bfloat16",
    }

    def __init__(self, dtype: str = "float16") -> None:
        target = self._ALIASES.get(dtype) if isinstance(dtype, str) else None
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

_NO_CODEC = frozenset({"none", "raw"})


def _codec_from_arg(key: str, arg: object) -> Codec | None:
    if isinstance(arg, str):
        if arg in _NO_CODEC:
            return None
        if arg in Cast._ALIASES:
            return Cast(arg)
        try:
            return codec_from_spec({"name": arg})
        except ConfigError as exc:
            raise ConfigError(
                f"codec {arg!r} for knowledge {key!r}: {exc}. Strings may also be "
                f"'float16', 'bfloat16' (casts) or 'none' (store as is)"
            ) from None
    if all(callable(getattr(arg, m, None)) for m in ("spec", "encode", "decode")):
        return arg  # type: ignore[return-value]
    raise ConfigError(
        f"the codec for knowledge {key!r} must be a codec object (spec/encode/decode) or a "
        f"name such as 'float16', got {arg!r}"
    )


def decode_field(codec: Codec, parts: dict[str, Value], field: FieldDesc, *, sparse: bool) -> Value:
    """Decode one field; with ``sparse``, codecs that have a sparse form (top-k) keep it."""
    if sparse:
        to_sparse = getattr(codec, "sparse", None)
        if to_sparse is not None:
            return to_sparse(parts, field)  # type: ignore[no-any-return]
    return codec.decode(parts, field)


def resolve_codecs(
    desc: Description, codecs: Mapping[str, Codec | str] | None, use_fp16: bool
) -> dict[str, Codec]:
    """The codec of every key that has one, in description order.

    Args:
        desc: the knowledge description (original dtypes).
        codecs: key -> codec object or name (``"float16"``/``"fp16"``, ``"bfloat16"``/``"bf16"``,
            ``"none"`` to store a key as is, or a registered codec name). Default: none.
        use_fp16: store every float32/float64 key not named in ``codecs`` as float16.

    Raises:
        ConfigError: a key not in ``desc``, an unknown codec, or a codec that cannot store
            its field (e.g. a cast of an integer field).
    """
    given = dict(codecs or {})
    unknown = [k for k in given if k not in desc]
    if unknown:
        raise ConfigError(
            f"codecs were given for {unknown}, which the knowledge does not have; "
            f"its keys are {list(desc)}"
        )
    out: dict[str, Codec] = {}
    for key, field in desc.items():
        codec: Codec | None
        if key in given:
            codec = _codec_from_arg(key, given[key])
        elif use_fp16 and field["dtype"] in ("float32", "float64"):
            codec = Cast("float16")
        else:
            codec = None
        if codec is None:
            continue
        check = getattr(codec, "check", None)
        if callable(check):
            check(key, field)
        out[key] = codec
    return out
