"""The knowledge service: a teacher program run over a reader on many devices, in order.

The seam of the service layer, the prediction side of
:meth:`pantheon.Teacher.start_knowledge_service`:

* :class:`ServiceSpec`: the service's arguments, checked once;
* :func:`make_round_factory` / :func:`make_query_handler`: rounds of chunks in reader order,
  or answers to the student's query batches;
* :func:`reader_round_factory`: a round factory from a reader of knowledge batches
  (``Teacher.serve``); :func:`with_progress`: a progress bar around one;
* readers (:mod:`.readers`), programs and devices (:mod:`.programs`), ordered multi-worker
  prediction (:mod:`.workers`), torch and ONNX programs (imported only when used);
* :func:`fingerprint_of`: what a teacher program is, as a short string (:mod:`.fingerprint`).
"""

from __future__ import annotations

from .fingerprint import fingerprint_of
from .programs import Program, Worker, build_workers, parse_devices
from .readers import iter_raw_batches, validate_reader_config
from .rounds import RoundFactory, reader_round_factory, reader_takes_round, with_progress
from .service import ServiceSpec, make_query_handler, make_round_factory
from .workers import RoundIterator

__all__ = [
    "Program",
    "RoundFactory",
    "RoundIterator",
    "ServiceSpec",
    "Worker",
    "build_workers",
    "fingerprint_of",
    "iter_raw_batches",
    "make_query_handler",
    "make_round_factory",
    "parse_devices",
    "reader_round_factory",
    "reader_takes_round",
    "validate_reader_config",
    "with_progress",
]
