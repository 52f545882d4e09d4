"""Map-style PyTorch datasets over a knowledge file: shuffled, distributed, multi-worker reading.

:class:`KnowledgeLookup` serves the knowledge of any sample id (``KnowledgeFile.take``), so
any sampler works (``RandomSampler``, ``DistributedSampler(shuffle=True)``); each loader
worker maps the file itself (only the path is pickled). :class:`WithKnowledge` pairs a
map-style dataset of your own with its knowledge, index by index.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .._codecs import SparseSamples, SparseTopK
from .._errors import ConfigError
from .._files import KnowledgeFile
from .._knowledge import Description, Knowledge, Ragged, Value
from .._service.torch_program import to_tensor

__all__ = ["KnowledgeLookup", "KnowledgeSamples", "WithKnowledge"]


def _writable(value: Value) -> Any:
    """The value with read-only arrays (views of the mapped file) copied, so that tensors made
    from it can be written to."""
    if isinstance(value, np.ndarray):
        return value if value.flags.writeable else value.copy()
    if isinstance(value, Ragged):
        return Ragged(_writable(value.values), value.lengths)
    if isinstance(value, SparseTopK):
        tail = None if value.tail is None else _writable(value.tail)
        return SparseTopK(
            _writable(value.values),
            _writable(value.indices),
            value.vocab_size,
            tail,
            holds=value.holds,
            temperature=value.temperature,
        )
    if isinstance(value, SparseSamples):
        ids, counts = _writable(value.ids), _writable(value.counts)
        return SparseSamples(ids, counts, value.vocab_size, value.n, value.temperature)
    return value


def _batch_tensors(value: Any, fill: float) -> Any:
    """A batch field as tensors: dense ``[n, ...]``; ragged ``(padded, lengths)``; sparse top-k
    ``(values, indices)`` (each converted the same way)."""
    if isinstance(value, np.ndarray):
        return to_tensor(value)
    if isinstance(value, Ragged):
        padded, lengths = value.padded(fill)
        return (to_tensor(padded), to_tensor(lengths))
    if isinstance(value, SparseTopK):
        return (_batch_tensors(value.values, fill), _batch_tensors(value.indices, fill))
    if isinstance(value, SparseSamples):  # sampled knowledge: (ids, counts)
        return (_batch_tensors(value.ids, 0), _batch_tensors(value.counts, 0))
    return value


def _sample_tensors(value: Any, j: int) -> Any:
    """Sample ``j`` of a batch field: dense ``[...]``; ragged ``[length, ...]``; sparse top-k
    ``(values, indices)``."""
    if isinstance(value, np.ndarray):
        return to_tensor(value[j])
    if isinstance(value, Ragged):
        return to_tensor(value[j])
    if isinstance(value, SparseTopK):
        return (_sample_tensors(value.values, j), _sample_tensors(value.indices, j))
    if isinstance(value, SparseSamples):
        return (_sample_tensors(value.ids, j), _sample_tensors(value.counts, j))
    return value


def _pad(samples: Sequence[torch.Tensor], fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in samples], dtype=torch.int64)
    padded = torch.nn.utils.rnn.pad_sequence(list(samples), batch_first=True, padding_value=fill)
    return padded, lengths


def _collate_field(values: list[Any], ragged: bool, fill: float) -> Any:
    if isinstance(values[0], tuple):  # sparse top-k: (values, indices)
        return tuple(
            _collate_field([v[i] for v in values], ragged, fill) for i in range(len(values[0]))
        )
    return _pad(values, fill) if ragged else torch.stack(values)


class KnowledgeSamples(Sequence[dict[str, Any]]):
    """What :meth:`KnowledgeLookup.__getitems__` returns: the samples of one read.

    A sequence of per-sample dicts (so that ``torch.utils.data.default_collate`` and your own
    collate functions work), which also holds the whole batch in :attr:`batch`:
    :meth:`KnowledgeLookup.collate` hands that out without stacking the samples again.

    Attributes:
        ids: the sample ids read, in order.
        batch: ``{key: tensor}`` of ``len(ids)`` samples (ragged fields as
            ``(padded, lengths)``, sparse top-k as ``(values, indices)``).
    """

    def __init__(self, ids: Sequence[int], knowledge: Knowledge, fill: float) -> None:
        self.ids = list(ids)
        self._knowledge = {k: _writable(v) for k, v in knowledge.items()}
        self.batch = {k: _batch_tensors(v, fill) for k, v in self._knowledge.items()}

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, j: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, j: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, j: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(j, slice):
            return [self[i] for i in range(len(self))[j]]
        j = range(len(self))[j]
        return {k: _sample_tensors(v, j) for k, v in self._knowledge.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[j] for j in range(len(self)))


class KnowledgeLookup(Dataset[dict[str, Any]]):
    """A knowledge file as a map-style ``torch.utils.data.Dataset``: item ``i`` is the knowledge
    of sample ``i``.

    Any sampler works: ``RandomSampler``, ``DistributedSampler(shuffle=True)`` with
    ``set_epoch``, your own. With ``DataLoader(num_workers=N)`` each worker maps the file
    itself when it first reads (only the path and the options below are pickled), so loader
    workers are safe and share the operating system's page cache. Use
    ``collate_fn=lookup.collate``: a batch is then read with one
    :meth:`~pantheon.KnowledgeFile.take` and handed out as it is (``__getitems__``); the
    default collate function works too for files without variable-length or sparse fields.

    Items and batches are dicts of tensors, one per knowledge key: a dense field is a tensor
    (``[...]`` per sample, ``[n, ...]`` per batch); a variable-length field is ``[length, ...]``
    per sample and ``(padded [n, max_len, ...], lengths [n])`` per batch; a top-k field read
    with ``sparse_topk=True`` is ``(values, indices)``. Tensors can be written to (values
    read straight from the mapped file are copied first).

    Args:
        path: a knowledge file or a directory of shards whose sample ids are ``0..N-1``
            (teachers number the samples so by default); ``len()`` is its number of samples.
        sparse_topk: hand top-k fields as ``(values, indices)`` instead of densifying them
            (default False).
        ragged_fill: the padding value of variable-length fields in batches (default 0).
        allow_truncated: read a cut-short file up to its last complete batch (default True).

    Raises:
        FileFormatError: not a readable knowledge file (when constructed).
        KnowledgeError: reading an id the file does not hold, naming it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sparse_topk: bool = False,
        ragged_fill: float = 0,
        allow_truncated: bool = True,
    ) -> None:
        self.path = Path(path)
        self.sparse_topk = bool(sparse_topk)
        self.ragged_fill = ragged_fill
        self.allow_truncated = bool(allow_truncated)
        self._file: KnowledgeFile | None = None
        self._pid = -1
        kf = self.file
        self._len = kf.num_samples
        self._ragged = {k for k, f in kf.desc.items() if f["lod_level"]}

    @property
    def file(self) -> KnowledgeFile:
        """This process's :class:`~pantheon.KnowledgeFile` (opened on first use in each process)."""
        if self._file is None or self._pid != os.getpid():
            self._file = KnowledgeFile(
                self.path, allow_truncated=self.allow_truncated, sparse_topk=self.sparse_topk
            )
            self._pid = os.getpid()
        return self._file

    @property
    def desc(self) -> Description:
        """The knowledge description."""
        return self.file.desc

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> KnowledgeSamples:
        """The samples ``indices`` (sample ids) with one read (what ``DataLoader`` calls)."""
        ids = [operator.index(i) for i in indices]
        return KnowledgeSamples(ids, self.file.take(ids), self.ragged_fill)

    def take(self, ids: Sequence[int]) -> dict[str, Any]:
        """The batch of the sample ``ids`` as tensors (what ``collate`` makes of them)."""
        return self.__getitems__(ids).batch

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The ``collate_fn`` for a ``DataLoader`` over this dataset: the batch of a
        :class:`KnowledgeSamples` as it is; a list of samples read one by one (e.g. through a
        ``ConcatDataset``) stacked, variable-length fields padded."""
        if isinstance(items, KnowledgeSamples):
            return items.batch
        if not items:
            raise ConfigError("collate() got no samples; expected at least one")
        return {
            key: _collate_field([s[key] for s in items], key in self._ragged, self.ragged_fill)
            for key in items[0]
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1  # each process maps the file itself
        return state

    def __repr__(self) -> str:
        return f"KnowledgeLookup({str(self.path)!r}, {self._len} samples)"


class _Pairs(Sequence[tuple[Any, dict[str, Any]]]):
    """What :meth:`WithKnowledge.__getitems__` returns: the dataset's items and their knowledge."""

    def __init__(self, data: Sequence[Any], knowledge: KnowledgeSamples) -> None:
        self.data = data
        self.knowledge = knowledge

    def __len__(self) -> int:
        return len(self.knowledge)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self[i] for i in range(len(self))[j]]
        return (self.data[j], self.knowledge[j])


class WithKnowledge(Dataset[tuple[Any, dict[str, Any]]]):
    """Your map-style dataset paired with its knowledge: item ``i`` is
    ``(dataset[i], knowledge of sample i)``.

    For knowledge dumped in the dataset's own order (sample ``i`` of the file is item ``i``
    of the dataset), shuffle both together with any sampler. Use ``collate_fn=paired.collate``:
    each batch is ``(collate_data(items), knowledge batch)``, the knowledge read with one
    ``take``.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``; ``__getitems__`` is used
            when it has one).
        knowledge: a :class:`KnowledgeLookup`, or the path of the knowledge file.
        collate_data: how a list of the dataset's items becomes a batch (default
            ``torch.utils.data.default_collate``).

    Raises:
        ConfigError: the dataset and the knowledge differ in length (naming both).
    """

    def __init__(
        self,
        dataset: Any,
        knowledge: KnowledgeLookup | str | os.PathLike[str],
        *,
        collate_data: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        lookup = knowledge if isinstance(knowledge, KnowledgeLookup) else KnowledgeLookup(knowledge)
        if len(dataset) != len(lookup):
            raise ConfigError(
                f"the dataset has {len(dataset)} items but {lookup.path} holds knowledge of "
                f"{len(lookup)} samples; pair a dataset with the knowledge its teacher dumped "
                "in the dataset's order (or wrap the dataset in a Subset of those samples)"
            )
        self.dataset = dataset
        self.knowledge = lookup
        self.collate_data = collate_data if collate_data is not None else default_collate

    def __len__(self) -> int:
        return len(self.knowledge)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        return (self.dataset[index], self.knowledge[index])

    def __getitems__(self, indices: Sequence[int]) -> _Pairs:
        """The items and their knowledge (one knowledge read), for ``DataLoader``."""
        many = getattr(self.dataset, "__getitems__", None)
        data = many(list(indices)) if callable(many) else [self.dataset[i] for i in indices]
        return _Pairs(data, self.knowledge.__getitems__(indices))

    def collate(self, items: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
        """The ``collate_fn`` for a ``DataLoader`` over the pairs: ``(data batch, knowledge
        batch)``."""
        if isinstance(items, _Pairs):
            return (self.collate_data(list(items.data)), self.knowledge.collate(items.knowledge))
        data = [d for d, _ in items]
        return (self.collate_data(data), self.knowledge.collate([k for _, k in items]))
