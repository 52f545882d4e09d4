"""The layout of knowledge files: columns, Arrow types and the ``pantheon.*`` schema metadata.

The format is documented byte by byte in ``docs/format.md``. In short: one Arrow IPC file
(or a directory of shards ``part-00000.arrow``, ...), written batch by batch; first column
``__sample_id__`` (int64), then one column per stored part of every key; the description,
storage layout and codecs as JSON in the schema metadata (``pantheon.*``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .._codecs import Codec, codec_from_spec, column_name
from .._errors import ConfigError, FileFormatError
from .._knowledge import DTYPE_NAMES, FINGERPRINT_KEYS, Description, FieldDesc

__all__ = [
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "ID_COLUMN",
    "META_DESC",
    "META_FINGERPRINTS",
    "META_FORMAT",
    "META_STORAGE",
    "META_VERSION",
    "SHARD_NAME",
    "USER_PREFIX",
    "ColumnSpec",
    "Layout",
    "arrow_type",
    "bad_metadata",
    "parse_layout",
    "shard_paths",
]

COMPRESSIONS: tuple[str | None, ...] = (None, "lz4", "zstd")
"""Compression codecs of knowledge files (Arrow IPC buffer compression)."""

FORMAT_VERSION = "1"
ID_COLUMN = "__sample_id__"
META_FORMAT = "pantheon.format"
META_VERSION = "pantheon.version"
META_DESC = "pantheon.desc"
META_STORAGE = "pantheon.storage"
USER_PREFIX = "pantheon.user."
META_FINGERPRINTS = {key: f"pantheon.{key}" for key in FINGERPRINT_KEYS}
"""``"fingerprint"`` -> ``"pantheon.fingerprint"``, ``"dataset_fingerprint"`` -> ``"pantheon.dataset_fingerprint"``."""
SHARD_NAME = "part-{:05d}.arrow"
_MAX_WIDTH = 2**31 - 1  # values per element of a fixed-size list (Arrow's int32 list_size)

_ARROW_STORAGE: dict[str, pa.DataType] = {
    "bool": pa.uint8(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "float16": pa.float16(),
    "bfloat16": pa.uint16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}


@dataclass(frozen=True)
class ColumnSpec:
    """One stored column: the part ``part`` of a key, with its storage dtype and shape."""

    name: str
    part: str
    dtype: str
    shape: tuple[int, ...]
    lod_level: int

    @property
    def inner(self) -> tuple[int, ...]:
        """The fixed dimensions of one element (after the batch and ragged dimensions)."""
        return self.shape[1 + self.lod_level :]

    @property
    def width(self) -> int:
        """Scalars per element: the product of :attr:`inner` (1 without inner dims)."""
        return math.prod(self.inner)

    def to_json(self) -> dict[str, Any]:
        """The column's entry in ``pantheon.storage``."""
        return {
            "name": self.name,
            "part": self.part,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "lod_level": self.lod_level,
        }


def arrow_type(dtype: str, shape: tuple[int, ...] | list[int], lod_level: int) -> pa.DataType:
    """The Arrow type of a column storing ``dtype`` values of description ``shape``.

    Dense ``[-1, d1..dk]``: ``fixed_size_list<storage>[d1*...*dk]`` (a primitive column when
    k == 0); ragged ``[-1, -1, d2..]``: ``large_list`` of that. bool is stored as uint8 and
    bfloat16 as uint16 (its bit pattern).
    """
    storage = _ARROW_STORAGE[dtype]
    inner = tuple(shape[1 + lod_level :])
    item = pa.list_(storage, math.prod(inner)) if inner else storage
    return pa.large_list(item) if lod_level == 1 else item


def shard_paths(directory: Path) -> list[Path]:
    """The ``*.arrow`` files of a directory in name order (numbers compared as numbers)."""

    def key(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in directory.glob("*.arrow") if p.is_file()), key=key)


@dataclass(frozen=True)
class Layout:
    """What a file's ``pantheon.*`` metadata says, checked against its columns."""

    desc: Description
    storage: dict[str, Any]
    codecs: dict[str, Codec]
    columns: list[tuple[str, ColumnSpec]]
    version: str
    user: dict[str, str]
    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)


def bad_metadata(path: Path, what: str) -> FileFormatError:
    """The error for a file whose ``pantheon.*`` metadata is inconsistent or unreadable."""
    return FileFormatError(
        f"{path}: corrupt Pantheon metadata: {what}. The file was not written by a compatible "
        "Pantheon; dump the knowledge again"
    )


def _check_shape(path: Path, where: str, shape: Any, lod: Any) -> tuple[int, ...]:
    if lod not in (0, 1):
        raise bad_metadata(path, f"{where} has lod_level {lod!r}, expected 0 or 1")
    if not isinstance(shape, list) or len(shape) < 1 + lod or shape[0] != -1:
        raise bad_metadata(path, f"{where} has shape {shape!r}, expected [-1, ...]")
    if lod == 1 and shape[1] != -1:
        raise bad_metadata(
            path, f"{where} is ragged but its shape {shape!r} does not start [-1, -1]"
        )
    inner = shape[1 + lod :]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in inner):
        raise bad_metadata(path, f"{where} has shape {shape!r}; its fixed dimensions must be >= 0")
    if math.prod(inner) > _MAX_WIDTH:
        raise bad_metadata(
            path,
            f"{where} has shape {shape!r}: its fixed dimensions hold {math.prod(inner)} values "
            f"per element, more than an Arrow fixed-size list can ({_MAX_WIDTH})",
        )
    return tuple(shape)


def _parse_desc(path: Path, raw: Any) -> Description:
    if not isinstance(raw, dict) or not raw:
        raise bad_metadata(path, f"{META_DESC} must be a non-empty JSON object, got {raw!r}")
    for key, field in raw.items():
        if not isinstance(field, dict) or field.get("dtype") not in DTYPE_NAMES:
            raise bad_metadata(
                path, f"{META_DESC} entry {key!r} is {field!r}; expected a known dtype"
            )
        _check_shape(path, f"{META_DESC} entry {key!r}", field.get("shape"), field.get("lod_level"))
    return raw


def _parse_columns(path: Path, key: str, field: FieldDesc, entry: Any) -> list[ColumnSpec]:
    if not isinstance(entry, dict) or not isinstance(entry.get("columns"), list):
        raise bad_metadata(path, f"{META_STORAGE} entry {key!r} is {entry!r}; expected columns")
    out = []
    for col in entry["columns"]:
        if not isinstance(col, dict) or col.get("dtype") not in DTYPE_NAMES:
            raise bad_metadata(path, f"{META_STORAGE} column {col!r} of {key!r} has no known dtype")
        part = col.get("part")
        if not isinstance(part, str) or col.get("name") != column_name(key, part):
            raise bad_metadata(path, f"{META_STORAGE} column {col!r} of {key!r} is misnamed")
        where = f"column {col['name']!r}"
        shape = _check_shape(path, where, col.get("shape"), col.get("lod_level"))
        out.append(ColumnSpec(col["name"], part, col["dtype"], shape, col["lod_level"]))
    if not out:
        raise bad_metadata(path, f"{META_STORAGE} entry {key!r} lists no columns")
    if entry.get("codec") is None:
        only = out[0]
        if len(out) != 1 or only.part or only.dtype != field["dtype"]:
            raise bad_metadata(
                path, f"{key!r} has no codec, so it needs one column of its own dtype"
            )
        if list(only.shape) != field["shape"] or only.lod_level != field["lod_level"]:
            raise bad_metadata(path, f"{key!r}: the column's shape differs from the description")
    return out


def parse_layout(path: Path, schema: pa.Schema) -> Layout:
    """Read and check Pantheon's schema metadata; raises :class:`FileFormatError`."""
    meta = schema.metadata or {}
    if META_FORMAT.encode() not in meta:
        raise FileFormatError(
            f"{path}: not a Pantheon knowledge file: an Arrow IPC file without the "
            f"'{META_FORMAT}' schema metadata. Write knowledge files with Teacher.dump or "
            "pantheon's KnowledgeWriter (or add the metadata described in docs/format.md)"
        )
    try:
        text = {k.decode(): v.decode() for k, v in meta.items()}
        fmt = text[META_FORMAT]
        if fmt != FORMAT_VERSION:
            raise FileFormatError(
                f"{path}: knowledge file format {fmt!r}, but this Pantheon reads format "
                f"{FORMAT_VERSION!r}; upgrade Pantheon (pip install -U pantheon-kd)"
            )
        desc = _parse_desc(path, json.loads(text[META_DESC]))
        storage = json.loads(text[META_STORAGE])
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_metadata(path, f"missing or unreadable {exc}") from None
    except RecursionError:
        raise bad_metadata(path, "its JSON is nested too deeply to be a description") from None
    if not isinstance(storage, dict) or list(storage) != list(desc):
        raise bad_metadata(
            path, f"{META_STORAGE} must list the keys of {META_DESC} in the same order"
        )
    codecs: dict[str, Codec] = {}
    columns: list[tuple[str, ColumnSpec]] = []
    for key, field in desc.items():
        spec = storage[key].get("codec") if isinstance(storage[key], dict) else None
        if spec is not None:
            try:
                codecs[key] = codec = codec_from_spec(spec)
                check = getattr(codec, "check", None)
                if callable(check):  # the codec can store this field (top-k: a vocabulary axis)
                    check(key, field)
            except ConfigError as exc:
                raise FileFormatError(f"{path}: the codec of knowledge {key!r}: {exc}") from None
        columns.extend((key, c) for c in _parse_columns(path, key, field, storage[key]))
    want = [pa.field(ID_COLUMN, pa.int64())]
    want += [pa.field(c.name, arrow_type(c.dtype, c.shape, c.lod_level)) for _, c in columns]
    got = [pa.field(f.name, f.type) for f in schema]
    if got != want:
        raise bad_metadata(
            path,
            f"the columns {[(f.name, str(f.type)) for f in got]} do not match the layout "
            f"{[(f.name, str(f.type)) for f in want]} that {META_STORAGE} implies",
        )
    user = {k[len(USER_PREFIX) :]: v for k, v in text.items() if k.startswith(USER_PREFIX)}
    version = text.get(META_VERSION, "")
    prints = {key: text[meta] for key, meta in META_FINGERPRINTS.items() if text.get(meta)}
    return Layout(desc, storage, codecs, columns, version, user, prints)
