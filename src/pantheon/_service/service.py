"""The knowledge service: run a teacher program over a reader on many devices, in order.

This is the prediction side of :meth:`pantheon.Teacher.start_knowledge_service`. The teacher
turns a *round factory* into a knowledge file or a TCP stream::

    make_round = make_round_factory(ServiceSpec(feed_list, schema, program, reader_config))
    for chunk in make_round(round_index=0, start_sample=0):   # Chunk(ids, data), in reader order
        ...

and answers the student's query batches with :func:`make_query_handler`.

* readers: :mod:`pantheon._service.readers` (``reader_config`` formats, batching);
* programs and devices: :mod:`pantheon._service.programs` (callables, torch modules, ONNX
  files, objects with ``for_device``; ``exe`` as ``None``, a device, a list or an int);
* ordered multi-worker prediction: :mod:`pantheon._service.workers`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from .._knowledge import Knowledge, Value
from .._metrics import Histogram
from .._util import check_int
from .programs import (
    Worker,
    adapt_program_args,
    build_workers,
    parse_devices,
    predict_batch,
    validate_program,
    validate_schema,
)
from .readers import (
    batch_size_of,
    initial_ragged,
    iter_raw_batches,
    reader_takes_round_index,
    to_feed_value,
    validate_reader_config,
)
from .workers import RoundIterator

__all__ = ["ServiceSpec", "make_query_handler", "make_round_factory"]


@dataclass(frozen=True)
class ServiceSpec:
    """What the knowledge service runs: the arguments of ``start_knowledge_service``, checked once.

    Attributes:
        feed_list: names of the reader's input fields, in order.
        schema: ``{knowledge_name: source}``, source an output name of the program or a feed
            name (the input is then passed through as knowledge).
        program: the teacher (see :mod:`pantheon._service.programs`), ``None`` when every
            schema source is a feed. A ``paddle.static.Program`` may come with Variables in
            ``feed_list`` and ``schema``; the spec keeps their names and the program wrapped.
        reader_config: the reader (see :mod:`pantheon._service.readers`); ``None``: the
            teacher only answers queries.
        exe: the worker devices: ``None`` (one CPU worker), ``"cuda:0"``, a list, or an int
            number of CPU workers.
        buf_size: the seed's name for the bound on batches in the prediction pipeline (read
            and not yet handed out), in reader batches; default 10.

    Raises:
        ConfigError: naming the argument, what was expected and what came. Checks that need
            the program's outputs (a schema source that is neither an output nor a feed)
            happen on the first batch.
    """

    feed_list: tuple[str, ...]
    schema: Mapping[str, str]
    program: Any
    reader_config: Mapping[str, Any] | None = None
    exe: Any = None
    buf_size: int = 10

    def __post_init__(self) -> None:
        feed_list, schema, program = adapt_program_args(self.feed_list, self.schema, self.program)
        object.__setattr__(self, "program", program)
        object.__setattr__(self, "feed_list", feed_list)
        object.__setattr__(self, "schema", schema)
        validate_schema(self.feed_list, self.schema)
        object.__setattr__(self, "feed_list", tuple(self.feed_list))
        object.__setattr__(self, "schema", dict(self.schema))
        validate_program(self.program, self.feed_list, self.schema)
        if self.reader_config is not None:
            validate_reader_config(self.feed_list, self.reader_config)
        parse_devices(self.exe)
        check_int("buf_size", self.buf_size, unit="batches in flight")
        object.__setattr__(self, "buf_size", int(self.buf_size))

    @property
    def devices(self) -> list[str]:
        """One device string per worker."""
        return parse_devices(self.exe)


def make_round_factory(
    spec: ServiceSpec, timings: Histogram | None = None
) -> Callable[[int, int], RoundIterator]:
    """Build the teacher's round factory ``make_round(round_index, start_sample) -> iterator
    of Chunk``.

    The program is placed on its devices once, here (one copy or session per worker), and
    reused by every round. Each call of ``make_round`` re-runs the reader from its start (a
    generator that takes an argument is given ``round_index``) and returns a
    :class:`~pantheon._service.workers.RoundIterator` of ``Chunk(ids, data)`` in reader
    order, ``ids`` being the samples' positions ``0..N-1`` in the round. Batches that
    end at or below ``start_sample`` are read but not predicted; a batch that straddles it is
    predicted and sliced. At most ``spec.buf_size`` batches are in flight. ``timings``, when
    given, records the seconds of every program call.

    Raises:
        ConfigError: ``spec`` has no reader (use :func:`make_query_handler`).
    """
    reader_config = spec.reader_config
    if reader_config is None:
        raise ConfigError(
            "reader_config is None: a round needs a reader; use make_query_handler to answer "
            "queries only"
        )
    feeds = list(spec.feed_list)
    schema_d = dict(spec.schema)
    workers = _timed(build_workers(spec.program, feeds, spec.devices), timings)
    ragged = initial_ragged(reader_config)  # grows as variable-length feeds are seen
    per_round = reader_takes_round_index(reader_config)

    def make_round(round_index: int = 0, start_sample: int = 0) -> RoundIterator:
        rnd = check_int("round_index", round_index, minimum=0, unit="rounds")
        start = check_int("start_sample", start_sample, minimum=0, unit="samples")
        raw = iter_raw_batches(feeds, reader_config, ragged, rnd if per_round else None)
        return RoundIterator(raw, workers, feeds, schema_d, spec.buf_size, start)

    return make_round


def make_query_handler(
    spec: ServiceSpec, timings: Histogram | None = None
) -> Callable[[Mapping[str, Any]], Knowledge]:
    """Build ``handle(feeds) -> knowledge`` for query mode (``spec.reader_config`` is ignored;
    ``timings`` as in :func:`make_round_factory`).

    ``feeds`` is the student's own input batch, ``{feed name: array}`` (a list of per-sample
    arrays of different lengths is taken as a ragged field); keys not in ``feed_list`` are
    ignored. The handler predicts in the calling thread; with several devices, successive
    calls take the workers in turn, and concurrent calls run on different workers.

    Raises (from the handler):
        ConfigError: a missing feed, feeds of different batch sizes, or a schema source that
            is neither an output nor a feed.
        Exception: whatever the program raises, unchanged.
    """
    feeds_order = list(spec.feed_list)
    schema_d = dict(spec.schema)
    workers = _timed(build_workers(spec.program, feeds_order, spec.devices), timings)
    turn = itertools.count()

    def handle(query: Mapping[str, Any]) -> Knowledge:
        if not isinstance(query, Mapping):
            raise ConfigError(
                f"a query must be a dict of feed name -> array, got {type(query).__name__}"
            )
        missing = [f for f in feeds_order if f not in query]
        if missing:
            raise ConfigError(
                f"query: missing feeds {missing}; expected the keys {feeds_order} (feed_list), "
                f"got {sorted(map(str, query))}"
            )
        feeds: dict[str, Value] = {f: to_feed_value(f, query[f], "query") for f in feeds_order}
        n = batch_size_of(feeds, "query")
        worker = _pick(workers, turn)
        worker.prepare_thread()
        return predict_batch(worker, schema_d, feeds, n, f"query on {worker.name}")

    return handle


def _pick(workers: Sequence[Worker], turn: itertools.count[int]) -> Worker:
    """The next worker in turn, or the first idle one if that one is busy."""
    start = next(turn) % len(workers)
    for k in range(len(workers)):
        w = workers[(start + k) % len(workers)]
        if not w.lock.locked():
            return w
    return workers[start]


def _timed(workers: list[Worker], timings: Histogram | None) -> list[Worker]:
    for worker in workers:
        worker.timings = timings
    return workers
