"""Reading knowledge files: :class:`KnowledgeFile`.

A knowledge file is an Arrow IPC *file* (see ``docs/format.md``): the 8-byte magic
``ARROW1\\0\\0``, a stream of encapsulated messages (one schema, then one record batch per
dumped batch) and a footer. Pantheon reads the message stream itself, memory-mapped, and
only checks the footer: a file whose footer is missing (its writer was killed) is read up to
its last complete batch. Plain batches (uncompressed, dense, without nulls) are decoded
straight from their message's flatbuffer (:mod:`.ipc`), without building pyarrow arrays; any
other batch goes through ``pa.ipc.read_record_batch``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .._chunks import slice_chunk
from .._codecs import PartKey, StoredParts, decode_batch
from .._errors import ClosedError, FileFormatError, KnowledgeError, TruncatedFileError
from .._knowledge import Chunk, Description, Knowledge, Value, check_batch
from .._util import check_int
from .decoders import decode_ids, decoder
from .ipc import Located, direct_plan, locate
from .layout import shard_paths
from .lookup import SampleIndex, as_ids, gather_parts, run_parts, single_run
from .shard import READ_ERRORS, CutShort, Shard

__all__ = ["KnowledgeFile"]

logger = logging.getLogger("pantheon")

_LOCATED_KEPT = 64  # distinct batch metadata remembered (one per batch size, usually 1 or 2)


class KnowledgeFile:
    """A knowledge file (or a directory of shards) opened for reading, memory-mapped.

    Args:
        path: an Arrow IPC knowledge file, or a directory whose ``*.arrow`` shards are read
            in name order as one stream (all must share one description).
        allow_truncated: read a file cut short (its writer was killed) up to its last
            complete batch, set :attr:`truncated` and log a warning (default). With False,
            raise the :class:`~pantheon.TruncatedFileError` instead.
        sparse_topk: hand top-k fields as :class:`~pantheon.SparseTopK` (values + indices)
            instead of densifying them (default False).

    Attributes:
        desc: the description, with the original dtypes.
        num_samples / num_batches: what can be read. nbytes: bytes on disk (all shards).
        compression: ``"lz4"``, ``"zstd"`` or None. codecs: key -> codec spec (keys with one).
        truncated: the :class:`~pantheon.TruncatedFileError` of a file cut short, else None.
        shards: the files read, in order. metadata: the user metadata (str -> str).
        version: the Pantheon version that wrote the file.

    Values are read-only views of the mapped file where the stored dtype is the
    description's dtype (copy them to modify them); they stay valid after :meth:`close`.

    Raises:
        FileFormatError: missing path, empty or non-Arrow file, an Arrow file that is not a
            Pantheon knowledge file, corrupt metadata, a directory without shards or with
            shards of different descriptions, a file cut before its first complete batch.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allow_truncated: bool = True,
        sparse_topk: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sparse_topk = sparse_topk
        self._allow_truncated = allow_truncated
        self._closed = False
        self._shards: list[Shard] = []
        self._sample_index: SampleIndex | None = None
        try:
            self._open(allow_truncated)
        except BaseException:
            self.close()
            raise

    def _open(self, allow_truncated: bool) -> None:
        path = self.path
        if not path.exists():
            raise FileFormatError(
                f"{path}: no such knowledge file or directory; check the path (teachers "
                "write it with Teacher(out_path=...).dump)"
            )
        if path.is_dir():
            files = shard_paths(path)
            if not files:
                raise FileFormatError(
                    f"{path}: a directory without shards (*.arrow files); pass a knowledge "
                    "file or the directory a sharded dump wrote"
                )
        else:
            files = [path]
        cut: tuple[Path, FileFormatError] | None = None
        for i, file in enumerate(files):
            try:
                self._shards.append(Shard(file))
            except CutShort as exc:
                if i == 0 or i != len(files) - 1:
                    raise
                cut = (file, exc)  # the last shard of a sharded dump, cut before its first batch
            except OSError as exc:
                raise FileFormatError(f"{file}: cannot be read ({exc})") from None
        first = self._shards[0]
        for shard in self._shards[1:]:
            if (shard.layout.desc, shard.layout.storage) != (
                first.layout.desc,
                first.layout.storage,
            ):
                raise FileFormatError(
                    f"{shard.path}: this shard's description {shard.layout.desc} differs from "
                    f"the first shard's {first.layout.desc} ({first.path}); every shard of a "
                    "directory must hold the same knowledge"
                )
        self._layout = first.layout
        self._part_keys: list[PartKey] = [(key, col.part) for key, col in first.layout.columns]
        self._decoders = [decoder(col) for _, col in first.layout.columns]
        self._direct = direct_plan(first.layout)
        self._located: dict[tuple[bytes, int], Located | None] = {}
        self._index: list[tuple[Shard, int]] = [
            (s, i) for s in self._shards for i in range(len(s.messages))
        ]
        self._sizes = [n for s in self._shards for n in s.sizes]
        self._starts = [0]
        for n in self._sizes:
            self._starts.append(self._starts[-1] + n)
        self.truncated = self._truncation(cut)
        if self.truncated is not None:
            if not allow_truncated:
                raise self.truncated
            logger.warning("%s", self.truncated)

    def _truncation(self, cut: tuple[Path, FileFormatError] | None) -> TruncatedFileError | None:
        batches, samples = len(self._sizes), self._starts[-1]
        shard = next((s for s in self._shards if not s.complete), None)
        if shard is not None:
            where, offset = shard.path, shard.end
            reason = f"the footer is missing ({shard.stop or 'the stream ends'} at byte {offset})"
        elif cut is not None:
            where, offset, reason = cut[0], 0, str(cut[1])
        else:
            return None
        return TruncatedFileError(
            f"{where}: knowledge file cut short (its writer was stopped): {reason}. "
            f"{batches} complete batches ({samples} samples) can be read; dump again to "
            "get the rest",
            path=str(where),
            complete_batches=batches,
            complete_samples=samples,
            offset=offset,
        )

    # ----------------------------------------------------------------- properties

    @property
    def desc(self) -> Description:
        """The knowledge description (original dtypes), a fresh copy."""
        return {k: {**f, "shape": list(f["shape"])} for k, f in self._layout.desc.items()}

    @property
    def num_samples(self) -> int:
        """Samples that can be read."""
        return self._starts[-1]

    @property
    def num_batches(self) -> int:
        """Complete batches that can be read."""
        return len(self._sizes)

    @property
    def nbytes(self) -> int:
        """Bytes on disk, all shards together."""
        return sum(s.nbytes for s in self._shards)

    @property
    def compression(self) -> str | None:
        """``"lz4"``, ``"zstd"`` or None (uncompressed), from the first batch."""
        return next((s.compression for s in self._shards if s.messages), None)

    @property
    def codecs(self) -> dict[str, dict[str, Any]]:
        """Key -> codec spec, for the keys stored with a codec."""
        return {k: c.spec() for k, c in self._layout.codecs.items()}

    @property
    def storage(self) -> dict[str, Any]:
        """The ``pantheon.storage`` metadata: per key, its codec and stored columns."""
        return json.loads(json.dumps(self._layout.storage))  # type: ignore[no-any-return]

    @property
    def metadata(self) -> dict[str, str]:
        """User metadata given to the writer."""
        return dict(self._layout.user)

    @property
    def fingerprints(self) -> dict[str, str]:
        """The fingerprints the file carries: ``"fingerprint"`` (its teacher's) and
        ``"dataset_fingerprint"`` (the data it read), each only if the writer was given one."""
        return dict(self._layout.fingerprints)

    @property
    def fingerprint(self) -> str | None:
        """The teacher's fingerprint (``pantheon.fingerprint``), or None."""
        return self._layout.fingerprints.get("fingerprint")

    @property
    def dataset_fingerprint(self) -> str | None:
        """The dataset's fingerprint (``pantheon.dataset_fingerprint``), or None."""
        return self._layout.fingerprints.get("dataset_fingerprint")

    @property
    def version(self) -> str:
        """The Pantheon version that wrote the file."""
        return self._layout.version

    @property
    def shards(self) -> list[Path]:
        """The files read, in order (one for a single file)."""
        return [s.path for s in self._shards]

    def batch_sizes(self) -> list[int]:
        """The number of samples of every complete batch, in order."""
        return list(self._sizes)

    # ----------------------------------------------------------------- reading

    def iter_chunks(self, start_sample: int = 0) -> Iterator[Chunk]:
        """Yield the knowledge as :class:`~pantheon._knowledge.Chunk` s, one per stored batch.

        Args:
            start_sample: skip the samples before this position (0-based, in file order):
                whole batches are skipped without being decoded and the first one is sliced
                (views). Empty batches are skipped.

        Raises:
            ClosedError: the file was closed. FileFormatError: a batch that cannot be decoded.
        """
        self._check_open()
        start_sample = check_int("start_sample", start_sample, minimum=0, unit="samples")
        first = max(bisect.bisect_right(self._starts, start_sample) - 1, 0)
        sizes, starts = self._sizes, self._starts
        for b in range(first, len(sizes)):
            if self._closed:
                raise ClosedError(f"{self.path}: the knowledge file was closed while reading")
            skip = start_sample - starts[b]
            if skip <= 0:
                if sizes[b]:
                    yield self._decode(b)
            elif skip < sizes[b]:
                yield slice_chunk(self._decode(b), skip, sizes[b])

    @property
    def sample_ids(self) -> np.ndarray:
        """The sample ids the file holds, in file order (read-only int64 ``[num_samples]``).

        The first use reads every batch's ids once (and :meth:`take` reuses them).
        """
        return self._index_of_ids().ids

    def take(self, ids: Any) -> Knowledge:
        """The knowledge of any sample ids, in the order asked: a knowledge batch.

        Args:
            ids: sample ids (a list, range, 1-D numpy array or tensor of integers), in any
                order; duplicates are allowed. An id held twice by the file gives its first
                occurrence.

        Returns:
            ``{key: value}`` with ``len(ids)`` samples: dense fields as arrays, ragged fields
            as :class:`~pantheon.Ragged`, codecs decoded (top-k kept sparse with
            ``sparse_topk``). When the ids are one increasing run inside one stored batch the
            values are read-only views of the mapped file; otherwise each needed batch is
            read once and its rows copied out.

        Raises:
            KnowledgeError: an id the file does not hold (or lost to a cut-short file), named.
            ConfigError: ``ids`` is not a 1-D sequence of integers. ClosedError: after close.
        """
        self._check_open()
        want = as_ids(ids)
        batch, row = self._index_of_ids().locate(want, self._where())
        run = single_run(batch, row)
        if run is not None:
            parts = run_parts(self._stored_checked(run[0]), run[1], len(want))
        elif len(want) == 0:
            parts = run_parts(self._stored_checked(0), 0, 0)
        else:
            parts = gather_parts(self._stored_checked, self._part_keys, batch, row)
        what = f"the {len(want)} samples asked (ids {want[:3].tolist()}{'...' * (len(want) > 3)})"
        return self._decode_parts(parts, len(want), what, self.path)

    def _where(self) -> str:
        cut = self.truncated
        if cut is None:
            return str(self.path)
        return (
            f"{self.path} (cut short: only its {cut.complete_batches} complete batches, "
            f"{cut.complete_samples} samples, could be read; the rest was lost when its writer "
            "stopped, dump the knowledge again to get it)"
        )

    def _stored_checked(self, index: int) -> StoredParts:
        try:
            return self._stored(index)[1]
        except FileFormatError:
            raise
        except (*READ_ERRORS, TypeError, IndexError) as exc:
            shard, local = self._index[index]
            raise self._corrupt(f"batch {local}", shard.path, exc) from None

    def _index_of_ids(self) -> SampleIndex:
        self._check_open()
        if self._sample_index is None:
            ids = []
            for b in range(len(self._sizes)):
                shard, local = self._index[b]
                try:
                    ids.append(self._stored(b)[0] if self._sizes[b] else np.zeros(0, np.int64))
                except FileFormatError:
                    raise
                except (*READ_ERRORS, TypeError, IndexError) as exc:
                    raise self._corrupt(f"batch {local}", shard.path, exc) from None
            self._sample_index = SampleIndex(ids)
        return self._sample_index

    def to_arrow(self) -> pa.Table:
        """The stored columns as a ``pyarrow.Table`` built on the mapped file (no copy).

        Columns as stored (``docs/format.md``): ``__sample_id__``, then one per stored part of
        every key (``key`` or ``key@part``, in storage dtypes: a cast key as float16, bool as
        uint8, bfloat16 as its uint16 bits; ``[-1, d1, d2]`` fields flattened to
        ``fixed_size_list[d1*d2]``). The schema keeps the ``pantheon.*`` metadata. A
        cut-short file gives its complete batches.
        """
        self._check_open()
        batches = [shard.read(i) for shard in self._shards for i in range(len(shard.messages))]
        return pa.Table.from_batches(batches, schema=self._shards[0].schema)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.path}: the knowledge file is closed; open it again")

    def _decode(self, index: int) -> Chunk:
        shard, local = self._index[index]
        try:
            ids, parts = self._stored(index)
        except FileFormatError:
            raise
        except (*READ_ERRORS, TypeError, IndexError) as exc:
            raise self._corrupt(f"batch {local}", shard.path, exc) from None
        if len(ids) != self._sizes[index]:
            raise self._corrupt(
                f"batch {local}",
                shard.path,
                f"{len(ids)} sample ids for {self._sizes[index]} samples",
            )
        return Chunk(ids, self._decode_parts(parts, len(ids), f"batch {local}", shard.path))

    def _stored(self, index: int) -> tuple[np.ndarray, StoredParts]:
        """Batch ``index``'s sample ids and stored parts (before the codecs), views if plain."""
        shard, local = self._index[index]
        direct = self._read_direct(shard, local)
        if direct is None:
            batch = shard.read(local)
            ids = decode_ids(batch.column(0))
            values = [ids, *(d(batch.column(i)) for i, d in enumerate(self._decoders, 1))]
        else:
            ids, values = direct
        return ids, {pk: values[i] for i, pk in enumerate(self._part_keys, 1)}

    def _decode_parts(self, parts: StoredParts, rows: int, what: str, where: Path) -> Knowledge:
        """The knowledge of ``rows`` samples from their stored parts (codecs decoded)."""
        desc, codecs = self._layout.desc, self._layout.codecs
        try:
            data = decode_batch(parts, desc, codecs, sparse=self.sparse_topk)
            for key, value in data.items():
                if len(value) != rows:
                    raise ValueError(f"{key!r} holds {len(value)} samples, not {rows}")
            # what a codec decoded must be what the description says (a stored column of
            # another shape came out as it was): the sparse forms are not arrays
            plain = {k: v for k, v in data.items() if not self.sparse_topk or k not in codecs}
            check_batch(plain, {k: desc[k] for k in plain}, where=f"the file's {what}")
        except FileFormatError:
            raise
        except KeyError as exc:  # a part its codec needs is not stored
            raise self._corrupt(what, where, f"no stored part {exc} for its codec") from None
        except (*READ_ERRORS, TypeError, IndexError, KnowledgeError) as exc:
            raise self._corrupt(what, where, exc) from None
        return data

    @staticmethod
    def _corrupt(what: str, where: Path, exc: object) -> FileFormatError:
        return FileFormatError(
            f"{where}: {what} cannot be decoded ({exc}); the file is corrupt, dump the "
            "knowledge again"
        )

    def _read_direct(self, shard: Shard, local: int) -> tuple[np.ndarray, list[Value]] | None:
        """A plain batch's ids and columns as views of its mapped body, or None (not plain).

        Where the columns lie is worked out once per distinct message metadata (a file's
        batches of one size share it) and kept.
        """
        if self._direct is None:
            return None
        msg = shard.messages[local]
        body = msg.body
        key = (msg.metadata.to_pybytes(), body.size)
        try:
            located = self._located[key]
        except KeyError:
            try:
                located = locate(key[0], key[1], self._direct)
            except (ValueError, IndexError, struct.error):
                located = None
            if len(self._located) >= _LOCATED_KEPT:
                self._located.clear()
            self._located[key] = located
        if located is None:
            return None
        arrays = [
            np.frombuffer(body, dtype, count, at).reshape(shape)
            for dtype, count, at, shape in located
        ]
        return arrays[0], [*arrays]

    # ----------------------------------------------------------------- lifetime

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Unmap the files (idempotent). Arrays already read stay valid."""
        self._closed = True
        for shard in self._shards:
            shard.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by path only: a copy (e.g. in a data loader worker) maps the file again."""
        return (_reopen, (str(self.path), self._allow_truncated, self.sparse_topk))

    def __enter__(self) -> KnowledgeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.num_samples} samples"
        return f"KnowledgeFile({str(self.path)!r}, {state}, keys={list(self._layout.desc)})"


def _reopen(path: str, allow_truncated: bool, sparse_topk: bool) -> KnowledgeFile:
    return KnowledgeFile(path, allow_truncated=allow_truncated, sparse_topk=sparse_topk)
