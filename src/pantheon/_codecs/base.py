"""The codec interface and the registry of codecs by name.

A codec turns one field (a numpy array or a :class:`~pantheon.Ragged` field) into one or
more *stored parts* and back. Each part has a suffix; the part ``""`` is the field itself
(a cast), others carry names such as ``"values"`` and ``"indices"`` (top-k). A codec
describes itself with a JSON-able :meth:`Codec.spec` that carries its ``"name"``; readers
rebuild it with :func:`codec_from_spec`, which only looks names up in the registry (it
never imports or runs code named by a file or a peer).

To add a codec, implement the three methods and register a factory::

    from pantheon import register_codec

    class Scale:
        name = "scale"
        def __init__(self, factor): self.factor = factor
        def spec(self): return {"name": "scale", "factor": self.factor}
        def encode(self, value): return {"": value / self.factor}
        def decode(self, parts, field): return parts[""] * self.factor

    register_codec("scale", lambda spec: Scale(spec["factor"]))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .._errors import ConfigError
from .._knowledge import FieldDesc, Value
from .._util import short_repr

__all__ = [
    "FLOAT_DTYPES",
    "Codec",
    "CodecFactory",
    "codec_from_spec",
    "register_codec",
    "registered_codecs",
]

FLOAT_DTYPES: frozenset[str] = frozenset({"float16", "bfloat16", "float32", "float64"})
"""Description dtypes of float fields (what casts and top-k accept)."""


@runtime_checkable
class Codec(Protocol):
    """How one knowledge field is stored: ``encode`` to named parts, ``decode`` back.

    Implementations may also define

    * ``check(key, field) -> None``, raising :class:`~pantheon.ConfigError` when the codec
      cannot store a field of that description (:func:`~pantheon._codecs.resolve_codecs`
      calls it when present);
    * ``sparse(parts, field)``, a sparse form handed to the student instead of the dense
      field when it asks for one (top-k: :class:`~pantheon.SparseTopK`);
    * ``encode_ids(value, ids) -> parts``, used instead of ``encode`` with the batch's int64
      sample ids, for codecs whose parts depend on them (:class:`~pantheon.Sampled` draws its
      random numbers from the ids, so that a sample's knowledge is the same in any batch).
    """

    def spec(self) -> dict[str, Any]:
        """A JSON-able description with a ``"name"`` that :func:`codec_from_spec` rebuilds."""
        ...

    def encode(self, value: Value) -> dict[str, Value]:
        """The stored parts of one field: suffix -> value (``""``: the field itself)."""
        ...

    def decode(self, parts: dict[str, Value], field: FieldDesc) -> Value:
        """Rebuild the field from its parts, with the dtype and shape of ``field``."""
        ...


CodecFactory = Callable[[Mapping[str, Any]], Codec]
"""Builds a codec from its spec (the dict :meth:`Codec.spec` returned)."""

_REGISTRY: dict[str, CodecFactory] = {}


def register_codec(name: str, factory: CodecFactory) -> None:
    """Make a codec known to :func:`codec_from_spec` (files and peers name it) under ``name``.

    Args:
        name: the ``"name"`` its spec carries.
        factory: called with the spec (a mapping) to build the codec; it should raise
            :class:`~pantheon.ConfigError` for parameters it does not accept.

    Raises:
        ConfigError: ``name`` is empty or already registered (a registry never overwrites),
            or ``factory`` is not callable.
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
            f"a codec spec must be a mapping with a string 'name', got {short_repr(spec, 200)}; "
            'e.g. {"name": "cast", "dtype": "float16"}'
        )
    name = spec["name"]
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(
            f"unknown codec {name!r:.100}: known codecs are {', '.join(registered_codecs())}. "
            "A codec from a newer Pantheon or a plug-in must be registered with "
            "pantheon.register_codec before use"
        )
    try:
        return factory(spec)
    except ConfigError:
        raise
    except Exception as exc:  # a factory that trips over a hostile spec
        raise ConfigError(
            f"codec {name!r} refused its spec {short_repr(dict(spec))}: {exc}"
        ) from None
