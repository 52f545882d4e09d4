"""Codecs applied to whole batches: one seam for knowledge files and the wire alike.

:func:`resolve_codecs` picks each key's codec from the user's settings; :func:`encode_batch`
turns a knowledge batch into its *stored parts*, a mapping ``(key, part) -> value`` (part
``""`` for a key stored as it is), and :func:`decode_batch` rebuilds the batch from them. A
file stores part ``(key, part)`` in the column :func:`column_name` ``(key, part)``
(``key`` or ``"key@part"``); the wire carries the pair itself. :func:`encode_batch` refuses a
batch where a part's column name is taken by another key (a raw key ``"logits@values"``
beside ``logits`` stored with top-k), so files and streams hold the same knowledge.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._errors import ConfigError, KnowledgeError
from .._knowledge import Description, FieldDesc, Knowledge, Value
from .base import Codec, codec_from_spec
from .cast import CAST_ALIASES, Cast
from .ints import IntCast

__all__ = [
    "PartKey",
    "StoredParts",
    "column_name",
    "decode_batch",
    "decode_field",
    "encode_batch",
    "resolve_codecs",
]

PartKey = tuple[str, str]
"""A stored part: ``(key, part)``; part ``""`` is the field itself."""
StoredParts = dict[PartKey, Value]
"""A batch's stored parts in description order."""


def column_name(key: str, part: str) -> str:
    """The file column of a stored part: ``key`` or ``f"{key}@{part}"``."""
    return key if part == "" else f"{key}@{part}"


def encode_batch(
    data: Knowledge,
    codecs: Mapping[str, Codec],
    *,
    where: str = "",
    ids: np.ndarray | None = None,
) -> StoredParts:
    """The stored parts of a (normalized) batch: each key through its codec, if it has one.

    Args:
        data: the batch.
        codecs: key -> codec.
        where: what the batch is, for error messages.
        ids: the batch's int64 sample ids, handed to codecs that draw random numbers
            (``encode_ids(value, ids)``, e.g. :class:`~pantheon._codecs.Sampled`) so that a
            sample's knowledge depends on its id only; default ``0, 1, ...``.

    Raises:
        KnowledgeError: a value its codec refuses (naming the key), or a part whose column
            name (``"key@part"``) is another key of the batch or another part's, naming both;
            the message says how to fix it.
    """
    if not codecs:
        return {(key, ""): value for key, value in data.items()}
    out: StoredParts = {}
    for key, value in data.items():
        codec = codecs.get(key)
        if codec is None:
            out[(key, "")] = value
            continue
        try:
            with_ids = getattr(codec, "encode_ids", None)
            if with_ids is not None:
                n = len(value)
                parts = with_ids(value, np.arange(n, dtype=np.int64) if ids is None else ids)
            else:
                parts = codec.encode(value)
        except KnowledgeError as exc:
            raise KnowledgeError(
                f"{where + ': ' if where else ''}knowledge {key!r}: {exc}"
            ) from None
        for part, part_value in parts.items():
            out[(key, part)] = part_value
    _check_columns(out, where)
    return out


def _check_columns(parts: StoredParts, where: str) -> None:
    seen: dict[str, PartKey] = {}
    for key, part in parts:
        name = column_name(key, part)
        other = seen.get(name)
        if other is not None:
            first = f"the part {other[1]!r} of {other[0]!r}" if other[1] else repr(other[0])
            second = f"the part {part!r} of {key!r}" if part else repr(key)
            raise KnowledgeError(
                f"{where + ': ' if where else ''}knowledge {first} clashes with {second}: both "
                f"would be stored as {name!r}; rename that key (names like '<key>@<part>' "
                "are taken by codecs)"
            )
        seen[name] = (key, part)


def decode_field(codec: Codec, parts: dict[str, Value], field: FieldDesc, *, sparse: bool) -> Value:
    """Decode one field; with ``sparse``, codecs that have a sparse form (top-k) keep it."""
    if sparse:
        to_sparse = getattr(codec, "sparse", None)
        if to_sparse is not None:
            return to_sparse(parts, field)  # type: ignore[no-any-return]
    return codec.decode(parts, field)


def decode_batch(
    parts: Mapping[PartKey, Value],
    desc: Description,
    codecs: Mapping[str, Codec],
    *,
    sparse: bool = False,
    where: str = "",
) -> Knowledge:
    """Rebuild the batch of ``desc`` from its stored parts (casting back, densifying, ...).

    Raises:
        KnowledgeError: a key of ``desc`` whose parts are missing, or that its codec cannot
            decode (e.g. top-k indices outside the vocabulary), naming the key.
    """
    if not codecs:
        try:
            return {key: parts[(key, "")] for key in desc}
        except KeyError as exc:
            raise _missing(exc.args[0], where) from None
    grouped: dict[str, dict[str, Value]] = {}
    for (key, part), value in parts.items():
        grouped.setdefault(key, {})[part] = value
    out: Knowledge = {}
    for key, field in desc.items():
        mine = grouped.get(key)
        if mine is None:
            raise _missing((key, ""), where)
        codec = codecs.get(key)
        if codec is None:
            if "" not in mine:
                raise _missing((key, ""), where)
            out[key] = mine[""]
        else:
            try:
                out[key] = decode_field(codec, mine, field, sparse=sparse)
            except KnowledgeError as exc:
                raise KnowledgeError(
                    f"{where + ': ' if where else ''}knowledge {key!r}: {exc}"
                ) from None
    return out


def _missing(part: PartKey, where: str) -> KnowledgeError:
    return KnowledgeError(
        f"{where + ': ' if where else ''}knowledge {part[0]!r} is missing from the stored parts "
        "(its teacher's description lists it)"
    )


_NO_CODEC = frozenset({"none", "raw"})
_INT_NAMES = frozenset({"int8", "int16", "int32", "uint8", "uint16", "uint32"})


def _codec_from_arg(key: str, arg: object) -> Codec | None:
    if isinstance(arg, str):
        if arg in _NO_CODEC:
            return None
        if arg in CAST_ALIASES:
            return Cast(arg)
        if arg in _INT_NAMES:
            return IntCast(arg)
        try:
            return codec_from_spec({"name": arg})
        except ConfigError as exc:
            raise ConfigError(
                f"codec {arg!r} for knowledge {key!r}: {exc}. Strings may also be "
                f"'float16', 'bfloat16' (casts), 'int32', 'int16', 'uint16', ... (integer "
                "narrowing) or 'none' (store as is)"
            ) from None
    if all(callable(getattr(arg, m, None)) for m in ("spec", "encode", "decode")):
        return arg  # type: ignore[return-value]
    raise ConfigError(
        f"the codec for knowledge {key!r} must be a codec object (spec/encode/decode) or a "
        f"name such as 'float16', got {arg!r}"
    )


def resolve_codecs(
    desc: Description, codecs: Mapping[str, Codec | str] | None, use_fp16: bool
) -> dict[str, Codec]:
    """The codec of every key that has one, in description order.

    Args:
        desc: the knowledge description (original dtypes).
        codecs: key -> codec object or name (``"float16"``/``"fp16"``, ``"bfloat16"``/``"bf16"``,
            ``"int8"``, ``"int16"``, ``"int32"``, ``"uint8"``, ``"uint16"``, ``"uint32"``
            (integers narrowed, range checked on write), ``"none"`` to store a key as is, or
            a registered codec name). Default: none.
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
