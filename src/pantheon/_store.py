"""Knowledge files: their layout, :class:`KnowledgeWriter` (and :class:`KnowledgeFile`).

The format is documented byte by byte in ``docs/format.md``. In short: one Arrow IPC file
(or a directory of shards ``part-00000.arrow``, ...), written batch by batch; first column
``__sample_id__`` (int64), then one column per stored part of every key; the description,
storage layout and codecs as JSON in the schema metadata (``pantheon.*``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ._codec import Codec, codec_from_spec, column_name, resolve_codecs
from ._errors import ClosedError, ConfigError, FileFormatError, KnowledgeError
from ._knowledge import (
    DTYPE_NAMES,
    Description,
    FieldDesc,
    Ragged,
    Value,
    check_batch,
    describe,
    normalize_batch,
)

if TYPE_CHECKING:
    from ._reader import KnowledgeFile

__all__ = [
    "COMPRESSIONS",
    "ColumnSpec",
    "KnowledgeFile",
    "KnowledgeWriter",
    "Layout",
    "arrow_type",
    "parse_layout",
    "shard_paths",
]

logger = logging.getLogger("pantheon")

COMPRESSIONS: tuple[str | None, ...] = (None, "lz4", "zstd")
"""Compression codecs of knowledge files (Arrow IPC buffer compression)."""

FORMAT_VERSION = "1"
ID_COLUMN = "__sample_id__"
META_FORMAT = "pantheon.format"
META_VERSION = "pantheon.version"
META_DESC = "pantheon.desc"
META_STORAGE = "pantheon.storage"
USER_PREFIX = "pantheon.user."
SHARD_NAME = "part-{:05d}.arrow"

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

# ----------------------------------------------------------------- layout (shared with _reader)


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
                codecs[key] = codec_from_spec(spec)
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
    return Layout(desc, storage, codecs, columns, version, user)


_STORAGE_VIEW: dict[str, np.dtype[Any]] = {
    "bool": np.dtype(np.uint8),
    "bfloat16": np.dtype(np.uint16),
}
_SHARD_RE = re.compile(r"part-\d{5,}\.arrow")


class _Column:
    """Writes one stored part as an Arrow array built on the numpy buffer (no copy)."""

    def __init__(self, spec: ColumnSpec) -> None:
        self.spec = spec
        self.type = arrow_type(spec.dtype, spec.shape, spec.lod_level)
        self.view = _STORAGE_VIEW.get(spec.dtype)
        self.prim = self.type
        while pa.types.is_large_list(self.prim) or pa.types.is_fixed_size_list(self.prim):
            self.prim = self.prim.value_type
        self.item = pa.list_(self.prim, spec.width) if spec.inner else None

    def _dense(self, values: np.ndarray) -> pa.Array:
        flat = np.ascontiguousarray(values)
        if self.view is not None:
            flat = flat.view(self.view)
        prim = pa.Array.from_buffers(self.prim, flat.size, [None, pa.py_buffer(flat)])
        if self.item is None:
            return prim
        return pa.Array.from_buffers(self.item, values.shape[0], [None], children=[prim])

    def array(self, value: Value) -> pa.Array:
        if isinstance(value, Ragged):
            child = self._dense(value.values)
            offsets = pa.py_buffer(value.offsets)
            return pa.Array.from_buffers(self.type, len(value), [None, offsets], children=[child])
        return self._dense(value)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(metadata or {})
    for k, v in out.items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise ConfigError(
                f"metadata must map non-empty strings to strings, got {k!r}: {v!r}; "
                "encode other values yourself, e.g. with json.dumps"
            )
    return out


def _check_ids(ids: npt.ArrayLike, n: int, where: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise KnowledgeError(
            f"{where}: ids has shape {list(arr.shape)}, expected [{n}] (one id per sample)"
        )
    if n and arr.dtype.kind not in "iu":
        raise KnowledgeError(f"{where}: ids must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


class KnowledgeWriter:
    """Dump knowledge batches to an Arrow IPC knowledge file, batch by batch.

    Each :meth:`write` appends one record batch and hands it to the operating system before
    returning (no buffering in Python), so a writer killed later leaves a file whose complete
    batches can be read. :meth:`close` writes the footer.

    Args:
        path: the file to write (its parent directory is created), or with
            ``max_shard_samples`` the directory of the shards. An existing file is replaced;
            stale ``part-NNNNN.arrow`` shards of an earlier dump are removed.
        compression: None (default), ``"lz4"`` or ``"zstd"``: Arrow buffer compression.
            Dense float logits barely compress; reads are several times slower.
        use_fp16: store float32/float64 keys without another codec as float16 (the
            description keeps the original dtype; readers cast back). Default False.
        codecs: key -> codec or codec name (``"float16"``, ``"bfloat16"``, ``"none"``, ...).
        max_shard_samples: write shards of at least this many samples each
            (``part-00000.arrow``, ...; a batch is never split, so a shard closes at the
            first batch that reaches the limit). Default None: one file.
        metadata: user str -> str metadata, stored as ``pantheon.user.<name>``.

    Raises:
        ConfigError: bad arguments.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        compression: str | None = None,
        use_fp16: bool = False,
        codecs: Mapping[str, Codec | str] | None = None,
        max_shard_samples: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be None, 'lz4' or 'zstd', got {compression!r}")
        if max_shard_samples is not None and (
            isinstance(max_shard_samples, bool)
            or not isinstance(max_shard_samples, int)
            or max_shard_samples <= 0
        ):
            raise ConfigError(
                f"max_shard_samples must be a positive number of samples or None, got "
                f"{max_shard_samples!r}"
            )
        self._path = Path(path)
        if max_shard_samples is None and self._path.is_dir():
            raise ConfigError(
                f"{self._path} is a directory; give a file path, or max_shard_samples to "
                "write shards into the directory"
            )
        if max_shard_samples is not None and self._path.is_file():
            raise ConfigError(
                f"{self._path} is a file, but max_shard_samples writes shards into a directory"
            )
        self._compression = compression
        self._use_fp16 = bool(use_fp16)
        self._codec_args = dict(codecs) if codecs else None
        self._max_shard = max_shard_samples
        self._user = _check_metadata(metadata)
        self._desc: Description | None = None
        self._codecs: dict[str, Codec] = {}
        self._columns: list[tuple[str, _Column]] = []
        self._part_desc: Description = {}
        self._schema: pa.Schema | None = None
        self._sink: Any = None
        self._ipc: Any = None
        self._shards: list[Path] = []
        self._shard_samples = 0
        self._num_samples = 0
        self._num_batches = 0
        self._next_id = 0
        self._closed = False

    # ----------------------------------------------------------------- properties

    @property
    def path(self) -> Path:
        """The file, or the directory of the shards."""
        return self._path

    @property
    def desc(self) -> Description | None:
        """The description fixed by the first batch (original dtypes), or None before it."""
        if self._desc is None:
            return None
        return {k: {**f, "shape": list(f["shape"])} for k, f in self._desc.items()}

    @property
    def num_samples(self) -> int:
        """Samples written so far."""
        return self._num_samples

    @property
    def num_batches(self) -> int:
        """Batches written so far."""
        return self._num_batches

    @property
    def shards(self) -> list[Path]:
        """The files written so far (the file itself without sharding)."""
        return list(self._shards)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # ----------------------------------------------------------------- writing

    def write(self, data: Mapping[str, Any], ids: npt.ArrayLike | None = None) -> None:
        """Append one knowledge batch.

        Args:
            data: name -> array (or torch tensor, or list of per-sample arrays for a
                variable-length field); all with the same number of samples. The first
                batch fixes the description.
            ids: int64 sample ids of the batch's samples. Default: continue counting from
                the previous batch's last id (0, 1, 2, ... from the start).

        Raises:
            KnowledgeError: a malformed batch, or one whose keys, dtypes or trailing shapes
                differ from the first batch (naming the key, expected and got), or ids of
                the wrong length. ClosedError: after :meth:`close`.
        """
        if self._closed:
            raise ClosedError(f"{self._path}: write() after close(); open a new KnowledgeWriter")
        where = f"batch {self._num_batches} written to {self._path}"
        batch, n = normalize_batch(data, where=where)
        id_arr = (
            np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            if ids is None
            else _check_ids(ids, n, where)
        )
        if self._desc is None:
            stored = self._setup(batch, where)
        else:
            check_batch(batch, self._desc, where=where)
            stored = self._encode(batch, where)
        arrays = [pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(id_arr)])]
        arrays += [col.array(stored[col.spec.name]) for _, col in self._columns]
        record = pa.RecordBatch.from_arrays(arrays, schema=self._schema)
        if self._ipc is None:
            self._open_next()
        self._ipc.write_batch(record)
        self._num_batches += 1
        self._num_samples += n
        self._shard_samples += n
        if n:
            self._next_id = int(id_arr[-1]) + 1
        if self._max_shard is not None and self._shard_samples >= self._max_shard:
            self._close_current()

    def _encode(self, batch: Mapping[str, Value], where: str) -> dict[str, Value]:
        stored: dict[str, Value] = {}
        for key, value in batch.items():
            codec = self._codecs.get(key)
            if codec is None:
                stored[key] = value
                continue
            for part, part_value in codec.encode(value).items():
                stored[column_name(key, part)] = part_value
        if self._codecs:
            check_batch(stored, self._part_desc, where=f"{where} (after its codecs)")
        return stored

    def _setup(self, batch: Mapping[str, Value], where: str) -> dict[str, Value]:
        """Fix the description, codecs, columns and schema from the first batch; encode it."""
        desc = describe(batch)
        if ID_COLUMN in desc:
            raise KnowledgeError(
                f"{where}: the name {ID_COLUMN!r} is reserved for sample ids; rename that key"
            )
        codecs = resolve_codecs(desc, self._codec_args, self._use_fp16)
        stored: dict[str, Value] = {}
        storage: dict[str, Any] = {}
        columns: list[tuple[str, _Column]] = []
        for key, value in batch.items():
            codec = codecs.get(key)
            parts = codec.encode(value) if codec is not None else {"": value}
            specs = []
            for part, part_value in parts.items():
                name = column_name(key, part)
                if name in stored or (part and name in desc):
                    raise KnowledgeError(
                        f"{where}: the stored column {name!r} of {key!r} clashes with another "
                        "key or part; rename the key (names like '<key>@<part>' are taken "
                        "by codecs)"
                    )
                stored[name] = part_value
                d = describe({name: part_value})[name]
                spec = ColumnSpec(name, part, d["dtype"], tuple(d["shape"]), d["lod_level"])
                specs.append(spec.to_json())
                columns.append((key, _Column(spec)))
            storage[key] = {"codec": codec.spec() if codec else None, "columns": specs}
        self._desc = desc
        self._codecs = codecs
        self._columns = columns
        self._part_desc = describe(stored)
        self._schema = self._make_schema(desc, storage, columns)
        return stored

    def _make_schema(
        self, desc: Description, storage: dict[str, Any], columns: list[tuple[str, _Column]]
    ) -> pa.Schema:
        from . import __version__

        meta = {
            META_FORMAT: FORMAT_VERSION,
            META_VERSION: __version__,
            META_DESC: json.dumps(desc),
            META_STORAGE: json.dumps(storage),
        }
        meta.update({USER_PREFIX + k: v for k, v in self._user.items()})
        fields = [pa.field(ID_COLUMN, pa.int64(), nullable=False)]
        fields += [pa.field(c.spec.name, c.type, nullable=False) for _, c in columns]
        return pa.schema(fields, metadata=meta)

    # ----------------------------------------------------------------- files

    def _open_next(self) -> None:
        if self._max_shard is None:
            target = self._path
            target.parent.mkdir(parents=True, exist_ok=True)
        else:
            if not self._shards:
                self._path.mkdir(parents=True, exist_ok=True)
                self._remove_stale_shards()
            target = self._path / SHARD_NAME.format(len(self._shards))
        options = pa.ipc.IpcWriteOptions(compression=self._compression)
        sink = pa.OSFile(str(target), "wb")
        try:
            self._ipc = pa.ipc.new_file(sink, self._schema, options=options)
        except BaseException:
            sink.close()
            raise
        self._sink = sink
        self._shards.append(target)
        self._shard_samples = 0

    def _remove_stale_shards(self) -> None:
        for old in self._path.iterdir():
            if _SHARD_RE.fullmatch(old.name) and old.is_file():
                logger.info("removing %s, a shard of an earlier dump", old)
                old.unlink()

    def _close_current(self) -> None:
        ipc, sink = self._ipc, self._sink
        self._ipc = self._sink = None
        try:
            if ipc is not None:
                ipc.close()
        finally:
            if sink is not None:
                sink.close()

    def close(self) -> None:
        """Write the footer and close the file (idempotent).

        A writer closed before its first batch writes no file at all (there is no
        description to store); a file already at ``path`` is then left as it was.
        """
        if self._closed:
            return
        self._closed = True
        self._close_current()

    def __enter__(self) -> KnowledgeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"KnowledgeWriter({str(self._path)!r}, {state}, batches={self._num_batches}, "
            f"samples={self._num_samples})"
        )


def __getattr__(name: str) -> Any:
    """``KnowledgeFile`` lives in ``_reader.py`` (which builds on the layout above); it is
    re-exported from here lazily, so that either module can be imported first."""
    if name == "KnowledgeFile":
        from ._reader import KnowledgeFile

        return KnowledgeFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
