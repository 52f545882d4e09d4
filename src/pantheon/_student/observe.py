"""What a student tells of itself: ``Student.stats()`` (overall and per teacher) and its
Prometheus metrics, built at scrape time from the same counters (``docs/guide/operating.md``
lists them)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._metrics import SECONDS_BUCKETS, Histogram, Metric, MetricsEndpoint, check_metrics_port
from .sources import Source

__all__ = ["StudentMeters", "start_metrics", "student_metrics", "student_stats"]

log = logging.getLogger("pantheon")

_PER_TEACHER_ONLY = ("batches", "samples")  # a teacher's own; the student's are its loop's


class StudentMeters:
    """The student's histogram: seconds the training loop waited for each batch."""

    def __init__(self) -> None:
        self.wait_seconds = Histogram(SECONDS_BUCKETS)


def start_metrics(
    port: Any, host: Any, who: str, source: Callable[[], Sequence[Metric]]
) -> MetricsEndpoint | None:
    """The student's ``/metrics`` endpoint (None without ``metrics_port``).

    Raises:
        ConfigError: a bad port or host, or one that cannot be bound.
        MissingDependencyError: no ``prometheus-client`` (the ``metrics`` extra).
    """
    checked = check_metrics_port(port, host)
    if checked is None:
        return None
    endpoint = MetricsEndpoint(source, host=checked[1], port=checked[0], what=who)
    log.info("%s: metrics on http://%s/metrics", who, endpoint.address)
    return endpoint


def student_stats(own: Mapping[str, Any], qsize: int, sources: Sequence[Source]) -> dict[str, Any]:
    """``Student.stats()``: the student's counters, the teachers' summed (``bytes``,
    ``reconnects``, ``shm_messages``; ``transport`` merged) and ``teachers``: each teacher's
    own, keyed by its name (``batches`` and ``samples`` it delivered, ``bytes``, ...)."""
    out: dict[str, Any] = dict(own)
    out["qsize"] = qsize
    teachers: dict[str, dict[str, Any]] = {}
    for source in sources:
        mine = dict(source.stats())
        mine.setdefault("batches", 0)
        mine.setdefault("samples", 0)
        teachers[source.name] = mine
        for key, value in mine.items():
            if key in _PER_TEACHER_ONLY:
                continue
            if isinstance(value, Mapping):
                out[key] = {**out.get(key, {}), **value}
            else:
                out[key] = out.get(key, 0) + value
    out["teachers"] = teachers
    return out


def student_metrics(stats: Mapping[str, Any], meters: StudentMeters) -> list[Metric]:
    """The student's metric families from :func:`student_stats` and its histogram; per-teacher
    families carry ``teacher`` (the teacher id: 0, 1, ... in registration order)."""
    out = [
        Metric(
            "pantheon_student_samples_total",
            "counter",
            "Samples handed to the training loop (merged knowledge of every teacher).",
        ).add(stats.get("samples", 0)),
        Metric(
            "pantheon_student_batches_total",
            "counter",
            "Batches of batch_size samples handed to the training loop.",
        ).add(stats.get("batches", 0)),
        Metric(
            "pantheon_student_rounds_total", "counter", "Rounds the training loop finished."
        ).add(stats.get("rounds", 0)),
        Metric(
            "pantheon_student_wait_seconds",
            "histogram",
            "Seconds the training loop waited for each next batch (0 when it was ready).",
        ).add(meters.wait_seconds),
        Metric(
            "pantheon_student_queue_batches",
            "gauge",
            "Merged batches assembled ahead and waiting for the training loop.",
        ).add(stats.get("qsize", 0)),
    ]
    per_teacher = [
        ("samples", "pantheon_student_received_samples_total", "Samples a teacher delivered."),
        (
            "batches",
            "pantheon_student_received_batches_total",
            "Knowledge chunks a teacher delivered (online: one per DATA message).",
        ),
        ("bytes", "pantheon_student_bytes_total", "Bytes of knowledge received from a teacher."),
        ("reconnects", "pantheon_student_reconnects_total", "Reconnections to a teacher."),
        (
            "shm_messages",
            "pantheon_student_shm_messages_total",
            "Knowledge messages a teacher sent through shared memory.",
        ),
    ]
    teachers = list(stats.get("teachers", {}).items())
    for key, name, text in per_teacher:
        family = Metric(name, "counter", text, ("teacher",))
        for i, (_, mine) in enumerate(teachers):
            family.add(mine.get(key, 0), str(i))
        out.append(family)
    info = Metric(
        "pantheon_student_teacher_info",
        "gauge",
        "1 for each registered teacher: its id and its name (address or file).",
        ("teacher", "name"),
    )
    for i, (name, _) in enumerate(teachers):
        info.add(1, str(i), name)
    out.append(info)
    return out
