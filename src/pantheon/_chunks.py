"""Operations on chunks (runs of samples with their ids): slicing, concatenating, gathering,
and cutting a chunk to one rank's shard of a round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._knowledge import Chunk, Knowledge, Ragged, Value, concat_values, slice_value

__all__ = [
    "COALESCE_BYTES",
    "JOIN_MIN_BYTES",
    "Positions",
    "chunk_nbytes",
    "concat_chunks",
    "select_samples",
    "shard_positions",
    "slice_chunk",
    "stride_chunk",
    "take_value",
]


def slice_chunk(chunk: Chunk, start: int, stop: int) -> Chunk:
    """Samples ``start:stop`` of a chunk, as views (the chunk itself for the whole range)."""
    if start == 0 and stop == len(chunk.ids):
        return chunk
    return Chunk(
        chunk.ids[start:stop], {k: slice_value(v, start, stop) for k, v in chunk.data.items()}
    )


COALESCE_BYTES = 4 * 1024 * 1024
"""Knowledge sent together in one message, at most about (default of
``Teacher(coalesce_bytes=)``, and what the service reads ahead of large batches to send them
together)."""
JOIN_MIN_BYTES = 64 * 1024
"""Chunks of at least this many bytes (on average) sent together are joined without a copy,
their frames gathered (``pantheon._wire.Pieces``); smaller ones are concatenated."""


class Positions:
    """Sample ids of consecutive batches, cut as read-only views of one ``arange`` block
    instead of one ``arange`` per batch (a small batch's ids cost a slice, not an
    allocation).

    Args:
        block: ids per block (default 65,536: 512 KiB, kept alive by the views of it).
    """

    __slots__ = ("_base", "_block", "_ids")

    def __init__(self, block: int = 65536) -> None:
        self._block = block
        self._base = 0
        self._ids = np.empty(0, np.int64)
        self._ids.flags.writeable = False

    def ids(self, start: int, stop: int) -> np.ndarray:
        """The int64 ids ``start, ..., stop - 1`` (read-only)."""
        lo = start - self._base
        if lo < 0 or stop - self._base > len(self._ids):
            self._base, lo = start, 0
            self._ids = np.arange(start, start + max(self._block, stop - start), dtype=np.int64)
            self._ids.flags.writeable = False
        return self._ids[lo : lo + stop - start]


def chunk_nbytes(chunk: Chunk) -> int:
    """Bytes of a chunk's knowledge (what coalescing counts; 8 per sample when it has none)."""
    return sum(int(getattr(v, "nbytes", 0)) for v in chunk.data.values()) or 8 * len(chunk.ids)


def concat_chunks(parts: Sequence[Chunk]) -> Chunk:
    """Consecutive chunks as one (one copy; the chunk itself when there is only one)."""
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts])
    data: Knowledge = {key: concat_values([p.data[key] for p in parts]) for key in parts[0].data}
    return Chunk(ids, data)


def take_value(value: Value, index: np.ndarray) -> Value:
    """Samples ``index`` (int array) of a field, in that order: a copy (a gather)."""
    if isinstance(value, np.ndarray):
        return np.take(value, index, axis=0)
    if isinstance(value, Ragged):
        offs = value.offsets
        starts, lengths = offs[index], value.lengths[index]
        rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
            int(lengths.sum())
        )
        return Ragged(value.values[rows], lengths)
    take: Any = getattr(value, "take")  # noqa: B009 - a sparse value (SparseTopK, ...)
    return take(index)


def shard_positions(first: int, n: int, start: int, rank: int, world: int) -> slice:
    """The samples of a run of ``n`` consecutive positions ``first, first + 1, ...`` that rank
    ``rank`` of ``world`` holds from position ``start`` on (``i >= start`` and
    ``i % world == rank``), as a slice of the run (a view when applied)."""
    skip = max(0, start - first)
    begin = skip + (rank - (first + skip)) % world
    return slice(min(begin, n), n, world)


def select_samples(chunk: Chunk, start: int, rank: int, world: int) -> Chunk:
    """The samples of ``chunk`` that rank ``rank`` of ``world`` receives from sample
    ``start`` on: ids ``>= start`` with ``id % world == rank``.

    Views where the chosen samples are evenly spaced (always, for consecutive ids); the chunk
    itself when it holds only chosen samples.
    """
    ids = chunk.ids
    n = len(ids)
    if n == 0 or (world == 1 and int(ids[0]) >= start):
        return chunk
    first = int(ids[0])
    if int(ids[-1]) - first == n - 1:  # consecutive ids: a strided view
        sel = shard_positions(first, n, start, rank, world)
        if sel.start == 0 and world == 1:
            return chunk
        if world == 1:
            return slice_chunk(chunk, int(sel.start), n)
        return stride_chunk(chunk, sel)
    index = np.flatnonzero((ids >= start) & (ids % world == rank))
    return Chunk(ids[index], {k: take_value(v, index) for k, v in chunk.data.items()})


def stride_chunk(chunk: Chunk, sel: slice) -> Chunk:
    """The samples ``sel`` (a slice with a step) of a chunk: views of dense fields, a gather
    of ragged ones."""
    return Chunk(chunk.ids[sel], {k: _stride(v, sel) for k, v in chunk.data.items()})


def _stride(value: Value, sel: slice) -> Value:
    if isinstance(value, np.ndarray):
        return value[sel]
    index = np.arange(len(value))[sel]
    return take_value(value, index)
