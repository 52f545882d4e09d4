"""Student-side PyTorch datasets over Pantheon knowledge."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .._errors import ConfigError
from .._knowledge import Ragged
from .._service.torch_program import to_tensor

__all__ = ["KnowledgeDataset"]


class KnowledgeDataset(IterableDataset[dict[str, Any]]):
    """A student's knowledge generator as a ``torch.utils.data.IterableDataset``.

    Each item is one knowledge batch as a dict of tensors, so use it with
    ``DataLoader(dataset, batch_size=None)`` (the student already batched). Arrays become
    tensors with ``torch.from_numpy`` (no copy); a :class:`~pantheon.Ragged` field becomes the
    pair ``(padded [n, max_len, ...], lengths [n] int64)``. Each ``iter()`` calls
    ``generator_factory()`` once (one round). Use ``num_workers`` 0 or 1: several loader
    workers would each read the same knowledge.

    Args:
        generator_factory: a reader creator, e.g. ``student.get_knowledge_generator(32)``.
        pin_memory: copy tensors into pinned memory when CUDA is available (default False).
        ragged_fill: the padding value of ragged fields (default 0).
    """

    def __init__(
        self,
        generator_factory: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        pin_memory: bool = False,
        ragged_fill: float = 0,
    ) -> None:
        if not callable(generator_factory):
            raise ConfigError(
                "KnowledgeDataset needs a reader creator (a callable returning an iterator of "
                f"dict batches), got {type(generator_factory).__name__}"
            )
        self._factory = generator_factory
        self._pin = bool(pin_memory) and torch.cuda.is_available()
        self._fill = ragged_fill

    def _convert(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            t = to_tensor(value)
            return t.pin_memory() if self._pin else t
        if isinstance(value, Ragged):
            padded, lengths = value.padded(self._fill)
            return (self._convert(padded), self._convert(lengths))
        if isinstance(value, torch.Tensor):
            return value.pin_memory() if self._pin and value.device.type == "cpu" else value
        return value

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError(
                f"KnowledgeDataset in a DataLoader with num_workers={info.num_workers}: each "
                "worker would read the same knowledge; use num_workers=0 or 1"
            )
        for batch in self._factory():
            yield {k: self._convert(v) for k, v in batch.items()}
