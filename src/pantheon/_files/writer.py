"""Writing knowledge files: :class:`KnowledgeWriter`, batch by batch (see ``docs/format.md``)."""

from __future__ import annotations

import json
import logging
import os
import re
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from .._codecs import Codec, StoredParts, column_name, encode_batch, resolve_codecs
from .._errors import ClosedError, ConfigError, KnowledgeError
from .._knowledge import (
    Description,
    Ragged,
    Value,
    check_batch,
    check_fingerprint,
    describe,
    normalize_batch,
)
from .._version import __version__
from .layout import (
    COMPRESSIONS,
    FORMAT_VERSION,
    ID_COLUMN,
    META_DESC,
    META_FINGERPRINTS,
    META_FORMAT,
    META_STORAGE,
    META_VERSION,
    SHARD_NAME,
    USER_PREFIX,
    ColumnSpec,
    arrow_type,
)

__all__ = ["KnowledgeWriter"]

logger = logging.getLogger("pantheon")

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


class _OpenShard:
    """The Arrow IPC writer and the file of the shard being written.

    Held apart from the :class:`KnowledgeWriter` so that a finalizer can finish the shard
    (write its footer) when a writer that was never closed is collected or the interpreter
    exits, without keeping the writer alive.
    """

    __slots__ = ("ipc", "sink")

    def __init__(self) -> None:
        self.ipc: Any = None
        self.sink: Any = None

    def close(self) -> None:
        ipc, sink = self.ipc, self.sink
        self.ipc = self.sink = None
        try:
            if ipc is not None:
                ipc.close()
        finally:
            if sink is not None:
                sink.close()


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
    batches can be read. :meth:`close` writes the footer; a writer that is never closed writes
    it when it is garbage-collected or when the interpreter exits (a process killed by a
    signal leaves a file that readers report as cut short).

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
        fingerprint: what identifies the teacher that wrote the knowledge (a string, e.g. a
            hash of its weights), stored as ``pantheon.fingerprint``. Default None: none.
        dataset_fingerprint: what identifies the data the teacher read, stored as
            ``pantheon.dataset_fingerprint``. Default None: none.

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
        fingerprint: str | None = None,
        dataset_fingerprint: str | None = None,
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
        given = {
            "fingerprint": check_fingerprint("fingerprint", fingerprint),
            "dataset_fingerprint": check_fingerprint("dataset_fingerprint", dataset_fingerprint),
        }
        self._fingerprints = {k: v for k, v in given.items() if v is not None}
        self._desc: Description | None = None
        self._codecs: dict[str, Codec] = {}
        self.observe: Callable[[StoredParts, Mapping[str, Codec]], None] | None = None
        """Called with each batch's encoded parts and the codecs (the teacher's metrics)."""
        self._columns: list[tuple[str, _Column]] = []
        self._part_desc: Description = {}
        self._schema: pa.Schema | None = None
        self._open = _OpenShard()
        self._finalizer = weakref.finalize(self, self._open.close)
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
            stored = self._setup(batch, where, id_arr)
        else:
            check_batch(batch, self._desc, where=where)
            stored = self._encode(batch, where, id_arr)
        if self.observe is not None:
            self.observe(stored, self._codecs)
        arrays = [pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(id_arr)])]
        arrays += [col.array(stored[(key, col.spec.part)]) for key, col in self._columns]
        record = pa.RecordBatch.from_arrays(arrays, schema=self._schema)
        if self._open.ipc is None:
            self._open_next()
        self._open.ipc.write_batch(record)
        self._num_batches += 1
        self._num_samples += n
        self._shard_samples += n
        if n:
            self._next_id = int(id_arr[-1]) + 1
        if self._max_shard is not None and self._shard_samples >= self._max_shard:
            self._close_current()

    def _encode(self, batch: Mapping[str, Value], where: str, ids: np.ndarray) -> StoredParts:
        stored = encode_batch(dict(batch), self._codecs, where=where, ids=ids)
        if self._codecs:
            named = {column_name(k, p): v for (k, p), v in stored.items()}
            check_batch(named, self._part_desc, where=f"{where} (after its codecs)")
        return stored

    def _setup(self, batch: Mapping[str, Value], where: str, ids: np.ndarray) -> StoredParts:
        """Fix the description, codecs, columns and schema from the first batch; encode it."""
        desc = describe(batch)
        codecs = resolve_codecs(desc, self._codec_args, self._use_fp16)
        stored = encode_batch(dict(batch), codecs, where=where, ids=ids)
        storage: dict[str, Any] = {}
        columns: list[tuple[str, _Column]] = []
        named: dict[str, Value] = {}
        for (key, part), part_value in stored.items():
            name = column_name(key, part)
            if name == ID_COLUMN:
                raise KnowledgeError(
                    f"{where}: the name {ID_COLUMN!r} is reserved for sample ids; rename that key"
                )
            named[name] = part_value
            d = describe({name: part_value})[name]
            spec = ColumnSpec(name, part, d["dtype"], tuple(d["shape"]), d["lod_level"])
            entry = storage.setdefault(key, {"codec": None, "columns": []})
            codec = codecs.get(key)
            entry["codec"] = codec.spec() if codec is not None else None
            entry["columns"].append(spec.to_json())
            columns.append((key, _Column(spec)))
        self._desc = desc
        self._codecs = codecs
        self._columns = columns
        self._part_desc = describe(named)
        self._schema = self._make_schema(desc, storage, columns)
        return stored

    def _make_schema(
        self, desc: Description, storage: dict[str, Any], columns: list[tuple[str, _Column]]
    ) -> pa.Schema:
        meta = {
            META_FORMAT: FORMAT_VERSION,
            META_VERSION: __version__,
            META_DESC: json.dumps(desc),
            META_STORAGE: json.dumps(storage),
        }
        meta.update({META_FINGERPRINTS[k]: v for k, v in self._fingerprints.items()})
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
            self._open.ipc = pa.ipc.new_file(sink, self._schema, options=options)
        except BaseException:
            sink.close()
            raise
        self._open.sink = sink
        self._shards.append(target)
        self._shard_samples = 0

    def _remove_stale_shards(self) -> None:
        for old in self._path.iterdir():
            if _SHARD_RE.fullmatch(old.name) and old.is_file():
                logger.info("removing %s, a shard of an earlier dump", old)
                old.unlink()

    def _close_current(self) -> None:
        self._open.close()

    def close(self) -> None:
        """Write the footer and close the file (idempotent).

        A writer closed before its first batch writes no file at all (there is no
        description to store); a file already at ``path`` is then left as it was.
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer()  # closes the current shard, once

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
