"""Round factories: how a teacher produces rounds, from a reader of knowledge or a program.

A round factory ``make_round(start_sample) -> Iterator[Chunk]`` re-runs its reader from the
start and yields the round's chunks from ``start_sample`` on, ids being the samples'
positions in the round (0-based). The knowledge service builds one from a program
(:func:`~pantheon._service.make_round_factory`); ``Teacher.serve`` from a reader of knowledge
batches (:func:`reader_round_factory`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .._chunks import slice_chunk
from .._errors import ConfigError
from .._knowledge import Chunk, normalize_batch

__all__ = ["RoundFactory", "reader_round_factory", "with_progress"]

RoundFactory = Callable[[int], Iterator[Chunk]]
"""``make_round(start_sample)``: the chunks of one round from ``start_sample`` on, in reader order."""


def reader_round_factory(reader: Callable[[], Iterable[Mapping[str, Any]]]) -> RoundFactory:
    """Turn a reader of knowledge batches into a round factory.

    ``reader()`` returns a fresh iterable of knowledge batches (dicts of arrays); sample ids are
    the samples' positions in that order. Samples below ``start_sample`` are dropped (the
    reader still produces them: the knowledge service skips them without predicting).
    """
    if not callable(reader):
        raise ConfigError(
            f"reader must be a callable returning a fresh iterable of knowledge batches (as the "
            f"seed's readers), got {type(reader).__name__}; wrap a list as `lambda: batches`"
        )

    def make_round(start_sample: int) -> Iterator[Chunk]:
        position = 0
        for i, batch in enumerate(reader()):
            data, n = normalize_batch(batch, where=f"knowledge batch {i}")
            begin, position = position, position + n
            if position <= start_sample:
                continue
            chunk = Chunk(np.arange(begin, position, dtype=np.int64), data)
            yield slice_chunk(chunk, max(0, start_sample - begin), n)

    return make_round


def with_progress(make_round: RoundFactory, label: str, enabled: bool | None) -> RoundFactory:
    """Wrap a round factory with a tqdm progress bar of samples (``None``: only on a terminal)."""
    if enabled is False:
        return make_round

    def wrapped(start_sample: int) -> Iterator[Chunk]:
        from tqdm.auto import tqdm

        disable = None if enabled is None else False  # tqdm: None = off unless a terminal
        with tqdm(desc=label, unit=" samples", initial=start_sample, disable=disable) as bar:
            for chunk in make_round(start_sample):
                yield chunk
                bar.update(len(chunk.ids))

    return wrapped
