"""A same-order pool's replica reads every round whole and predicts every R-th block of it.

:func:`split_reader` turns a ``reader_config`` into the ``batch_generator`` of replica ``j``
of ``R``: the reader's samples in blocks of ``block`` samples (the last may be shorter),
of which it keeps blocks ``j, j + R, j + 2R, ...``. Reader batches lying wholly in blocks of
other replicas are skipped without being converted; prediction, the costly part, is split.
The student puts the blocks back in reader order (``pantheon._online.SplitRound``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .._errors import ConfigError
from .._knowledge import Value, concat_values, slice_value
from .._service import iter_raw_batches, reader_takes_round, validate_reader_config

__all__ = ["block_of", "split_reader"]

_KINDS = ("sample_generator", "sample_list_generator", "batch_generator")


def block_of(reader_config: Mapping[str, Any], split_samples: int | None) -> int:
    """The block size of a same-order pool: ``split_samples``, else the reader's
    ``batch_size``.

    Raises:
        ConfigError: neither is known (a ``batch_generator`` or ``sample_list_generator``
            without ``split_samples``), or ``split_samples`` is not a positive integer.
    """
    if split_samples is not None:
        if isinstance(split_samples, bool) or not isinstance(split_samples, int):
            raise ConfigError(
                f"split_samples must be a number of samples > 0, got {split_samples!r}"
            )
        if split_samples < 1:
            raise ConfigError(f"split_samples must be a number of samples > 0, got {split_samples}")
        return split_samples
    size = reader_config.get("batch_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(
            "a same-order pool of several replicas splits each round into blocks, replica j "
            "predicting every R-th one; a reader without batch_size needs "
            "TeacherPool(split_samples=B) to say how many samples a block holds"
        )
    return size


def split_reader(
    feed_list: Sequence[str],
    reader_config: Mapping[str, Any],
    replica: int,
    replicas: int,
    block: int,
) -> dict[str, Any]:
    """The ``reader_config`` of replica ``replica`` of ``replicas`` (see the module docstring).

    Raises:
        ConfigError: an invalid ``reader_config``.
    """
    validate_reader_config(feed_list, reader_config)
    kind = next(k for k in _KINDS if k in reader_config)
    takes_round = reader_takes_round(reader_config[kind], f"reader_config[{kind!r}]")
    feeds_order = list(feed_list)

    def blocks(round_index: int) -> Iterator[dict[str, Value]]:
        raw = iter_raw_batches(
            feeds_order, reader_config, round_index=round_index if takes_round else None
        )
        yield from _own_blocks(raw, feeds_order, replica, replicas, block)

    out: dict[str, Any] = {"batch_generator": _named(blocks, replica, replicas)}
    if "ragged_feeds" in reader_config:
        out["ragged_feeds"] = reader_config["ragged_feeds"]
    return out


def _own_blocks(
    raw: Iterator[Any], feed_list: list[str], replica: int, replicas: int, block: int
) -> Iterator[dict[str, Value]]:
    pending: list[dict[str, Value]] = []
    position = 0  # the round's sample at the start of the reader batch
    for batch in raw:
        start, stop = position, position + batch.n
        position = stop
        first, last = start // block, (stop - 1) // block
        mine = [k for k in range(first, last + 1) if k % replicas == replica]
        if not mine:
            continue  # wholly another replica's: not even converted
        feeds = batch.feeds(feed_list)
        for k in mine:
            lo, hi = max(start, k * block), min(stop, (k + 1) * block)
            pending.append({f: slice_value(v, lo - start, hi - start) for f, v in feeds.items()})
            if hi == (k + 1) * block:
                yield _joined(pending)
                pending = []
    if pending:
        yield _joined(pending)


def _joined(parts: list[dict[str, Value]]) -> dict[str, Value]:
    if len(parts) == 1:
        return parts[0]
    return {f: concat_values([p[f] for p in parts]) for f in parts[0]}


def _named(
    fn: Callable[[int], Iterator[dict[str, Value]]], replica: int, replicas: int
) -> Callable[[int], Iterator[dict[str, Value]]]:
    fn.__name__ = fn.__qualname__ = f"blocks_of_replica_{replica}_of_{replicas}"
    return fn
