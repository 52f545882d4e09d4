"""Random access by sample id: where each id of a knowledge file lies, and gathering rows.

:class:`SampleIndex` is built once from the ids of every stored batch (file order) and maps
sample ids to ``(batch, row)``: by arithmetic when the ids are one increasing run (0, 1, 2, ...
as teachers write them), otherwise through the sorted ids and a binary search.
:func:`gather_parts` collects the asked rows of the stored parts (before the codecs decode
them) batch by batch, each needed batch read once, in the order asked.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._codecs import PartKey, StoredParts
from .._errors import ConfigError, KnowledgeError
from .._knowledge import Ragged, Value, concat_values, slice_value, to_numpy

__all__ = ["SampleIndex", "as_ids", "gather_parts", "single_run", "take_rows"]

_NAMED = 5  # missing ids named in an error message at most


def as_ids(ids: Any) -> np.ndarray:
    """The asked sample ids as a 1-D int64 array (a list, range, numpy array or tensor).

    Raises:
        ConfigError: not a 1-D sequence of integers.
    """
    arr = np.asarray(to_numpy(ids))
    if arr.ndim != 1:
        raise ConfigError(
            f"take() needs a 1-D sequence of sample ids, got an array of shape {list(arr.shape)}"
            "; for one sample pass [i]"
        )
    if arr.size and (arr.dtype.kind not in "iu" or arr.dtype == np.bool_):
        raise ConfigError(f"sample ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class SampleIndex:
    """The sample ids of a file, in file order, and where each one lies.

    Args:
        ids: the ids of every stored batch, in file order.

    An id held twice (two dumps appended with the same ids) resolves to its first occurrence.
    """

    def __init__(self, ids: Sequence[np.ndarray]) -> None:
        all_ids = (
            np.concatenate([np.asarray(i, np.int64) for i in ids]) if ids else np.zeros(0, np.int64)
        )
        self.ids = all_ids.astype(np.int64, copy=False)
        self.ids.flags.writeable = False
        sizes = np.array([len(i) for i in ids], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        n = len(self.ids)
        self.first: int | None = None
        self._order: np.ndarray | None = None
        self._sorted: np.ndarray | None = None
        if n and bool(np.all(np.diff(self.ids) == 1)):
            self.first = int(self.ids[0])
        elif n:
            self._order = np.argsort(self.ids, kind="stable")
            self._sorted = self.ids[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self) -> str:
        """The ids held, in words (for messages)."""
        n = len(self.ids)
        if n == 0:
            return "no samples"
        if self.first is not None:
            return f"{n} samples, ids {self.first}..{self.first + n - 1}"
        return f"{n} samples, ids from {int(self.ids.min())} to {int(self.ids.max())} (not a run)"

    def positions(self, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, found)``: each asked id's position in file order, and whether it is held."""
        n = len(self.ids)
        if n == 0:
            return np.zeros(len(want), np.int64), np.zeros(len(want), bool)
        if self.first is not None:
            pos = want - self.first
            return pos, (pos >= 0) & (pos < n)
        assert self._order is not None and self._sorted is not None
        k = np.minimum(np.searchsorted(self._sorted, want), n - 1)
        return self._order[k], self._sorted[k] == want

    def locate(self, want: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
        """``(batch, row)`` of every asked id.

        Raises:
            KnowledgeError: ids the file does not hold, naming them (``where`` says which file
                and, for a cut-short file, what was lost).
        """
        pos, found = self.positions(want)
        if not bool(np.all(found)):
            missing = want[~found]
            named = ", ".join(str(int(i)) for i in missing[:_NAMED])
            more = f" (and {len(missing) - _NAMED} more)" if len(missing) > _NAMED else ""
            which = "sample id" if len(missing) == 1 else "sample ids"
            raise KnowledgeError(
                f"{where}: {which} {named}{more} not in this knowledge file, which holds "
                f"{self.describe()}; ask for ids it holds (KnowledgeFile.sample_ids)"
            )
        batch = np.searchsorted(self.starts, pos, side="right") - 1
        return batch, pos - self.starts[batch]


def single_run(batch: np.ndarray, row: np.ndarray) -> tuple[int, int] | None:
    """``(batch, first row)`` when the rows asked are one increasing run inside one batch."""
    if len(batch) == 0:
        return None
    b, first = int(batch[0]), int(row[0])
    if len(batch) > 1 and not (np.all(batch == b) and np.all(np.diff(row) == 1)):
        return None
    return b, first


def take_rows(value: Value, rows: np.ndarray) -> Value:
    """Samples ``rows`` of a field, in that order (a copy; ragged fields gathered by offsets)."""
    if isinstance(value, np.ndarray):
        return value.take(rows, axis=0)
    if not isinstance(value, Ragged):
        raise TypeError(f"cannot gather rows of a {type(value).__name__}")
    offsets = value.offsets
    lengths = value.lengths[rows]
    starts = offsets[rows]
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    index = np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lengths)
    return Ragged(value.values.take(index, axis=0), lengths)


def run_parts(parts: StoredParts, first: int, count: int) -> StoredParts:
    """Samples ``first:first+count`` of every stored part, as views."""
    return {pk: slice_value(v, first, first + count) for pk, v in parts.items()}


def gather_parts(
    stored: Callable[[int], StoredParts],
    part_keys: Sequence[PartKey],
    batch: np.ndarray,
    row: np.ndarray,
) -> StoredParts:
    """The stored parts of the samples at ``(batch[i], row[i])``, in that order.

    Each needed batch is read once (``stored(b)``, views of the mapped file) and its rows
    gathered; the pieces are joined and put back in the order asked.
    """
    order = np.argsort(batch, kind="stable")
    grouped = batch[order]
    cuts = np.flatnonzero(np.diff(grouped)) + 1
    bounds = [0, *cuts.tolist(), len(batch)]
    pieces: dict[PartKey, list[Value]] = {pk: [] for pk in part_keys}
    for start, stop in itertools.pairwise(bounds):
        parts = stored(int(grouped[start]))
        rows = row[order[start:stop]]
        for pk in part_keys:
            pieces[pk].append(take_rows(parts[pk], rows))
    joined = {pk: concat_values(values) for pk, values in pieces.items()}
    if bool(np.all(order == np.arange(len(order)))):
        return joined
    back = np.empty(len(order), dtype=np.int64)
    back[order] = np.arange(len(order))
    return {pk: take_rows(v, back) for pk, v in joined.items()}
