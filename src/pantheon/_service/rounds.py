"""Round factories: how a teacher produces rounds, from a reader of knowledge or a program.

A round factory ``make_round(round_index, start_sample) -> Iterator[Chunk]`` re-runs its
reader from the start for round ``round_index`` (0-based) and yields the round's chunks from
``start_sample`` on, ids being the samples' positions in the round (0-based). The knowledge
service builds one from a program (:func:`~pantheon._service.make_round_factory`);
``Teacher.serve`` from a reader of knowledge batches (:func:`reader_round_factory`).

A reader creator is called once per round: as ``reader()`` (the seed's readers), or, if it
takes one argument, as ``reader(round_index)``, so that it can shuffle each round with a
seed of its own (see ``docs/guide/shuffling.md``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .._chunks import Positions, slice_chunk
from .._errors import ConfigError
from .._knowledge import Chunk, normalize_batch
from .merging import merge_ready

__all__ = ["RoundFactory", "reader_round_factory", "reader_takes_round", "with_progress"]

RoundFactory = Callable[[int, int], Iterator[Chunk]]
"""``make_round(round_index, start_sample)``: the chunks of one round from ``start_sample`` on,
in reader order."""

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def reader_takes_round(reader: Callable[..., Any], what: str) -> bool:
    """Whether the reader creator ``reader`` takes the round index (one required positional
    parameter, ``def reader(round_index): ...``) rather than nothing (``def reader(): ...``).

    Parameters with defaults are left alone (``def reader(batch_size=32)`` is called as
    ``reader()``); a callable whose signature cannot be read is called without arguments.

    Raises:
        ConfigError: a reader that needs more than one argument, or keyword-only ones.
    """
    try:
        params = list(inspect.signature(reader).parameters.values())
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False
    required = [p for p in params if p.kind in _POSITIONAL and p.default is p.empty]
    keyword = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 1 or keyword:
        names = ", ".join(p.name for p in required + keyword)
        raise ConfigError(
            f"{what} is called once per round, either with no argument (`def reader(): ...`) "
            f"or with the round index (`def reader(round_index): ...`), but it needs {names}; "
            "give the other arguments defaults or bind them with functools.partial"
        )
    return len(required) == 1


def reader_round_factory(reader: Callable[..., Iterable[Mapping[str, Any]]]) -> RoundFactory:
    """Turn a reader of knowledge batches into a round factory.

    ``reader()`` (or ``reader(round_index)``, see :func:`reader_takes_round`) returns a fresh
    iterable of knowledge batches (dicts of arrays); sample ids are the samples' positions in
    that order. Samples below ``start_sample`` are dropped (the reader still produces them:
    the knowledge service skips them without predicting).
    """
    if not callable(reader):
        raise ConfigError(
            f"reader must be a callable returning a fresh iterable of knowledge batches (as the "
            f"seed's readers), got {type(reader).__name__}; wrap a list as `lambda: batches`"
        )
    per_round = reader_takes_round(reader, "the reader")

    def make_round(round_index: int, start_sample: int) -> Iterator[Chunk]:
        return merge_ready(each(round_index, start_sample))

    def each(round_index: int, start_sample: int) -> Iterator[Chunk]:
        position = 0
        positions = Positions()
        batches = reader(round_index) if per_round else reader()
        for i, batch in enumerate(batches):
            data, n = normalize_batch(batch, where=f"knowledge batch {i}")
            begin, position = position, position + n
            if position <= start_sample:
                continue
            chunk = Chunk(positions.ids(begin, position), data)
            yield slice_chunk(chunk, max(0, start_sample - begin), n)

    return make_round


def with_progress(make_round: RoundFactory, label: str, enabled: bool | None) -> RoundFactory:
    """Wrap a round factory with a tqdm progress bar of samples (``None``: only on a terminal)."""
    if enabled is False:
        return make_round

    def wrapped(round_index: int, start_sample: int) -> Iterator[Chunk]:
        return _Progress(
            make_round(round_index, start_sample), label, round_index, start_sample, enabled
        )

    return wrapped


class _Progress(Iterator[Chunk]):
    """A round's chunks, counted on a tqdm bar (closed with the round); ``ready`` passed on."""

    def __init__(
        self,
        chunks: Iterator[Chunk],
        label: str,
        round_index: int,
        start: int,
        enabled: bool | None,
    ) -> None:
        from tqdm.auto import tqdm

        disable = None if enabled is None else False  # tqdm: None = off unless a terminal
        desc = f"{label} (round {round_index})" if round_index else label
        self._chunks = chunks
        self._bar = tqdm(desc=desc, unit=" samples", initial=start, disable=disable)

    def __iter__(self) -> _Progress:
        return self

    def __next__(self) -> Chunk:
        try:
            chunk = next(self._chunks)
        except BaseException:
            self.close()
            raise
        self._bar.update(len(chunk.ids))
        return chunk

    def ready(self) -> int:
        """Chunks the round holds read ahead (see :class:`~pantheon._service.ReadyChunks`)."""
        ready = getattr(self._chunks, "ready", None)
        return int(ready()) if callable(ready) else 0

    def close(self) -> None:
        """Close the bar and the round (idempotent)."""
        self._bar.close()
        close = getattr(self._chunks, "close", None)
        if callable(close):
            close()
