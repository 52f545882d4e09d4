"""Readers of the knowledge service: turn a ``reader_config`` into a stream of input batches.

A ``reader_config`` is one of (as the seed)::

    {"sample_generator": g, "batch_size": B, "drop_last": True}   # g() yields samples
    {"sample_list_generator": g}                                   # g() yields lists of samples
    {"batch_generator": g}                                         # g() yields batches

``g`` is a *reader creator*: a callable returning a fresh iterator, so a round can be re-run from
its start. It is called as ``g()``, or as ``g(round_index)`` if it takes one argument (the
round, 0-based: a reader can then shuffle each round with a seed of its own). A *sample* is a tuple (or list) of fields in ``feed_list`` order, or a dict keyed by
feed name; with a single feed a bare array or scalar is accepted too. A *batch* is the same with
one array per feed whose first dimension is the batch size.

Batches come out as ``dict[feed name -> numpy.ndarray]``: the samples' fields are stacked, so a
field of shape ``S`` becomes ``[B, *S]`` (a scalar per sample becomes ``[B]``; yield
``np.array([x])`` for ``[B, 1]``).

Variable-length feeds (token sequences) become :class:`~pantheon.Ragged` fields: a feed whose
samples differ in length along their first axis in a batch (or, for ``batch_generator``, a feed
given as a list of per-sample arrays of different lengths, or as a ``Ragged``) is ragged from
then on, for every later batch and round of the same service. So that the very first batches
are ragged too (their samples may happen to share a length), name such feeds in the optional
key ``"ragged_feeds": ["input_ids"]``, accepted with every reader kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import ConfigError, KnowledgeError
from .._knowledge import Ragged, Value, common_batch_size, to_numpy
from .._util import check_int
from .rounds import reader_takes_round

__all__ = [
    "RawBatch",
    "batch_size_of",
    "initial_ragged",
    "iter_raw_batches",
    "reader_takes_round_index",
    "to_feed_value",
    "validate_reader_config",
]

_KINDS = ("sample_generator", "sample_list_generator", "batch_generator")
_OPTIONS = {"sample_generator": ("batch_size", "drop_last")}
_COMMON = ("ragged_feeds",)


def validate_reader_config(feed_list: Sequence[str], reader_config: Any) -> None:
    """Check a ``reader_config`` without running it.

    Raises:
        ConfigError: not a dict, no or several generator keys, unknown keys, a generator that
            is not callable, a missing or invalid ``batch_size``, a non-bool ``drop_last``.
    """
    if not isinstance(reader_config, Mapping):
        raise ConfigError(
            f"reader_config must be a dict with one of the keys {list(_KINDS)}, "
            f"got {type(reader_config).__name__}"
        )
    kinds = [k for k in _KINDS if k in reader_config]
    if len(kinds) != 1:
        got = "none of them" if not kinds else f"{kinds}"
        raise ConfigError(
            f"reader_config must have exactly one of the keys {list(_KINDS)}, got {got} "
            f"(keys: {sorted(map(str, reader_config))})"
        )
    kind = kinds[0]
    allowed = {kind, *_OPTIONS.get(kind, ()), *_COMMON}
    unknown = [k for k in reader_config if k not in allowed]
    if unknown:
        raise ConfigError(
            f"reader_config with {kind!r} accepts the keys {sorted(allowed)}, "
            f"got unknown {sorted(map(str, unknown))}"
        )
    if not callable(reader_config[kind]):
        raise ConfigError(
            f"reader_config[{kind!r}] must be a callable returning a fresh iterator "
            f"(a reader creator), got {type(reader_config[kind]).__name__}; pass the "
            "generator function itself, not the generator it returns"
        )
    reader_takes_round(reader_config[kind], f"reader_config[{kind!r}]")
    if kind == "sample_generator":
        check_int(
            "reader_config['batch_size'] (needed with 'sample_generator')",
            reader_config.get("batch_size"),
            unit="samples",
        )
        drop = reader_config.get("drop_last", True)
        if not isinstance(drop, (bool, np.bool_)):
            raise ConfigError(f"reader_config['drop_last'] must be a bool, got {drop!r}")
    if not feed_list:
        raise ConfigError("feed_list is empty: name the reader's input fields, in order")
    ragged = reader_config.get("ragged_feeds", [])
    if not isinstance(ragged, (list, tuple)) or not all(r in feed_list for r in ragged):
        raise ConfigError(
            f"reader_config['ragged_feeds'] must be a list of feed names from {list(feed_list)}, "
            f"got {ragged!r}"
        )


def reader_takes_round_index(reader_config: Mapping[str, Any]) -> bool:
    """Whether the generator of a (valid) ``reader_config`` takes the round index."""
    kind = next(k for k in _KINDS if k in reader_config)
    return reader_takes_round(reader_config[kind], f"reader_config[{kind!r}]")


def initial_ragged(reader_config: Mapping[str, Any]) -> set[str]:
    """The feeds declared ragged in ``reader_config`` (a set the readers add to)."""
    return set(reader_config.get("ragged_feeds", ()))


class RawBatch:
    """One batch as read, converted to feeds only when needed (skipped batches are not).

    Attributes:
        n: the number of samples.
        index: the batch's position in the reader's order (0-based).
    """

    __slots__ = ("_feeds", "_ragged", "_samples", "index", "n")

    def __init__(
        self,
        index: int,
        n: int,
        ragged: set[str],
        *,
        samples: list[Any] | None = None,
        feeds: dict[str, Value] | None = None,
    ) -> None:
        self.index = index
        self.n = n
        self._ragged = ragged
        self._samples = samples
        self._feeds = feeds

    def feeds(self, feed_list: Sequence[str]) -> dict[str, Value]:
        """The batch as ``dict[feed name -> array or Ragged]``.

        Raises:
            ConfigError: a sample with the wrong fields, or fields that cannot be stacked.
        """
        if self._feeds is None:
            assert self._samples is not None
            self._feeds = _stack_samples(feed_list, self._samples, self.index, self._ragged)
            self._samples = None
        return self._feeds


def iter_raw_batches(
    feed_list: Sequence[str],
    reader_config: Mapping[str, Any],
    ragged: set[str] | None = None,
    round_index: int | None = None,
) -> Iterator[RawBatch]:
    """Run the reader once from its start and yield its batches (empty batches are dropped).

    ``ragged`` is the set of feeds known to be variable-length; feeds found ragged are added
    to it (share one set between the rounds of a service so that they stay ragged). The
    generator is called as ``g()``, or as ``g(round_index)`` when ``round_index`` is given
    (see :func:`reader_takes_round_index`).

    Raises:
        ConfigError: the generator returned no iterator, or a batch is malformed.
    """
    kind = next(k for k in _KINDS if k in reader_config)
    source = _start(reader_config[kind], kind, round_index)
    try:
        rag = initial_ragged(reader_config) if ragged is None else ragged
        yield from _batches(kind, feed_list, reader_config, source, rag)
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


def _batches(
    kind: str,
    feed_list: Sequence[str],
    reader_config: Mapping[str, Any],
    source: Iterator[Any],
    ragged: set[str],
) -> Iterator[RawBatch]:
    if kind == "batch_generator":
        for index, batch in enumerate(source):
            feeds, n = _batch_feeds(feed_list, batch, index, ragged)
            if n:
                yield RawBatch(index, n, ragged, feeds=feeds)
        return
    if kind == "sample_list_generator":
        for index, samples in enumerate(source):
            if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Iterable):
                raise ConfigError(
                    f"sample_list_generator: item {index} is a {type(samples).__name__}; "
                    "expected a list of samples"
                )
            lst = list(samples)
            if lst:
                yield RawBatch(index, len(lst), ragged, samples=lst)
        return
    batch_size = int(reader_config["batch_size"])
    drop_last = bool(reader_config.get("drop_last", True))
    pending: list[Any] = []
    index = 0
    for sample in source:
        pending.append(sample)
        if len(pending) == batch_size:
            yield RawBatch(index, batch_size, ragged, samples=pending)
            pending = []
            index += 1
    if pending and not drop_last:
        yield RawBatch(index, len(pending), ragged, samples=pending)


def _start(creator: Callable[..., Any], kind: str, round_index: int | None) -> Iterator[Any]:
    it = creator() if round_index is None else creator(round_index)
    if isinstance(it, (str, bytes, Mapping)) or not isinstance(it, Iterable):
        raise ConfigError(
            f"reader_config[{kind!r}]() returned a {type(it).__name__}; expected an iterator "
            "(a generator function, called once per round)"
        )
    return iter(it)


def _sample_fields(feed_list: Sequence[str], sample: Any, where: str) -> list[Any]:
    nf = len(feed_list)
    if isinstance(sample, Mapping):
        missing = [f for f in feed_list if f not in sample]
        if missing:
            raise ConfigError(
                f"{where}: a dict sample must have the keys {list(feed_list)} (feed_list), "
                f"missing {missing}; got keys {sorted(map(str, sample))}"
            )
        return [sample[f] for f in feed_list]
    if isinstance(sample, (tuple, list)):
        if len(sample) != nf:
            raise ConfigError(
                f"{where}: expected {nf} field(s) in feed_list order {list(feed_list)}, "
                f"got a {type(sample).__name__} of {len(sample)}"
            )
        return list(sample)
    if nf == 1:
        return [sample]
    raise ConfigError(
        f"{where}: expected a tuple of {nf} fields in feed_list order {list(feed_list)} or a "
        f"dict keyed by feed name, got {type(sample).__name__}"
    )


def _stack_samples(
    feed_list: Sequence[str], samples: list[Any], index: int, ragged: set[str]
) -> dict[str, Value]:
    columns: list[list[Any]] = [[] for _ in feed_list]
    for j, sample in enumerate(samples):
        fields = _sample_fields(feed_list, sample, f"batch {index}, sample {j}")
        for col, value in zip(columns, fields, strict=True):
            col.append(value)
    return {
        name: _stack(name, col, f"batch {index}", ragged)
        for name, col in zip(feed_list, columns, strict=True)
    }


def _stack(name: str, values: list[Any], where: str, ragged: set[str]) -> Value:
    arrays = [np.asarray(to_numpy(v)) for v in values]
    first = arrays[0].shape
    same = all(a.shape == first for a in arrays)
    if same and name not in ragged:
        return np.stack(arrays)
    if first and all(a.ndim == len(first) and a.shape[1:] == first[1:] for a in arrays):
        ragged.add(name)
        return Ragged.from_list(arrays)
    shapes = sorted({tuple(a.shape) for a in arrays})[:4]
    raise ConfigError(
        f"{where}: the samples of feed {name!r} have shapes {[list(s) for s in shapes]}; "
        "expected one shape, or shapes differing only in their first (length) axis"
    )


def to_feed_value(name: str, value: Any, where: str, ragged: set[str] | None = None) -> Value:
    """Convert one batch field: arrays as they are, a list of per-sample arrays of different
    lengths to a :class:`Ragged` field, anything else through ``numpy.asarray``. A feed named
    in ``ragged`` always becomes ragged (a dense ``[n, L, ...]`` array: every row of length L);
    a feed found ragged is added to ``ragged``."""
    rag: set[str] = set() if ragged is None else ragged
    if isinstance(value, Ragged):
        rag.add(name)
        return value
    if isinstance(value, (list, tuple)):
        arrays = [np.asarray(to_numpy(v)) for v in value]
        if arrays and (name in rag or any(a.shape != arrays[0].shape for a in arrays)):
            try:
                out = Ragged.from_list(arrays)
            except KnowledgeError as exc:
                raise ConfigError(f"{where}: feed {name!r}: {exc}") from None
            rag.add(name)
            return out
    arr = np.asarray(to_numpy(value))
    if name in rag and arr.ndim >= 2:
        n, length = arr.shape[:2]
        return Ragged(arr.reshape(n * length, *arr.shape[2:]), np.full(n, length))
    return arr


def _batch_feeds(
    feed_list: Sequence[str], batch: Any, index: int, ragged: set[str]
) -> tuple[dict[str, Value], int]:
    if not ragged and type(batch) is tuple and len(batch) == len(feed_list):
        n = _dense_size(batch)  # the common case, checked in a few operations
        if n:
            return dict(zip(feed_list, batch, strict=True)), n
    where = f"batch_generator: batch {index}"
    fields = _sample_fields(feed_list, batch, where)
    feeds = {
        name: to_feed_value(name, v, where, ragged)
        for name, v in zip(feed_list, fields, strict=True)
    }
    return feeds, batch_size_of(feeds, where)


def _dense_size(batch: tuple[Any, ...]) -> int:
    """The batch size of a tuple of numpy arrays that share a first dimension (> 0), else 0
    (the caller then takes the general path, which explains what is wrong)."""
    n = 0
    for v in batch:
        if type(v) is not np.ndarray or not v.ndim:
            return 0
        if not n:
            n = v.shape[0]
        elif v.shape[0] != n:
            return 0
    return n


def batch_size_of(feeds: Mapping[str, Value], where: str) -> int:
    """The common first dimension of a batch's feeds.

    Raises:
        ConfigError: a 0-d feed or feeds whose first dimensions differ.
    """
    sizes: dict[str, int] = {}
    for name, v in feeds.items():
        if isinstance(v, np.ndarray) and v.ndim == 0:
            raise ConfigError(f"{where}: feed {name!r} is a 0-d array; expected shape [batch, ...]")
        sizes[name] = len(v)
    return common_batch_size(sizes, where, ConfigError)
