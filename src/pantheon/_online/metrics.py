"""A teacher's Prometheus metrics: its counters, prediction times and top-k mass at scrape time.

:class:`TeacherMeters` holds what the counters of ``Teacher.stats()`` do not: the histogram of
program calls (fed by the knowledge service's workers) and, for every key sent with a top-k
codec of log-probabilities (``TopK(log_softmax=True)``), the probability mass the kept
entries hold per position (``exp(values).sum(-1)``: k exponentials per position, from the
values the codec just computed, online or in a knowledge file). :func:`teacher_metrics` turns
a snapshot into metric families; ``docs/guide/operating.md`` lists them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._codecs import Codec, StoredParts, TopK, dequantize
from .._knowledge import Ragged
from .._metrics import MASS_BUCKETS, SECONDS_BUCKETS, Histogram, Metric

__all__ = ["TeacherMeters", "teacher_metrics"]


class TeacherMeters:
    """The histograms of one teacher (its counters live in its ``stats()``)."""

    def __init__(self) -> None:
        self.predict_seconds = Histogram(SECONDS_BUCKETS)
        self.topk_mass: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    def observe_parts(self, parts: StoredParts, codecs: Mapping[str, Codec]) -> None:
        """Record the top-k mass of the keys of an encoded batch stored as log-probabilities."""
        for key, codec in codecs.items():
            if not isinstance(codec, TopK) or not codec.log_softmax:
                continue
            values = parts.get((key, "values"))
            if values is None:
                continue
            if isinstance(values, Ragged):
                values = values.values
            if codec.values_dtype == "uint8":  # 8-bit codes and their per-position scale
                scale = parts[(key, "scale")]
                values = dequantize(values, scale.values if isinstance(scale, Ragged) else scale)
            mass = np.exp(np.asarray(values, dtype=np.float32)).sum(axis=-1)
            with self._lock:
                hist = self.topk_mass.setdefault(key, Histogram(MASS_BUCKETS))
            hist.observe_many(mass)


def teacher_metrics(
    stats: Mapping[str, Any], status: Mapping[str, Any] | None, meters: TeacherMeters
) -> list[Metric]:
    """The teacher's metric families from ``Teacher.stats()``, its status (online; None
    offline) and its histograms."""

    def counter(name: str, key: str, text: str) -> Metric:
        return Metric(name, "counter", text).add(stats.get(key, 0))

    out = [
        counter(
            "pantheon_teacher_samples_total",
            "samples",
            "Samples of knowledge sent (online: once per batch, whatever the number of "
            "students it went to) or dumped (offline).",
        ),
        counter(
            "pantheon_teacher_batches_total",
            "batches",
            "Knowledge batches (chunks of the round factory) sent or dumped.",
        ),
        counter(
            "pantheon_teacher_bytes_total",
            "bytes",
            "Bytes of knowledge sent to students (every copy), or on disk offline.",
        ),
        Metric(
            "pantheon_teacher_predict_seconds",
            "histogram",
            "Seconds of each program call of the knowledge service (one reader batch or query).",
        ).add(meters.predict_seconds),
    ]
    if status is not None:
        students = status.get("students") or []
        out.append(counter("pantheon_teacher_messages_total", "messages", "DATA messages sent."))
        out.append(
            counter(
                "pantheon_teacher_backpressure_seconds_total",
                "backpressure_seconds",
                "Seconds the round factory waited for room (its slowest student set the pace).",
            )
        )
        by_group = Counter(str(s.get("group")) for s in students)
        gauge = Metric(
            "pantheon_teacher_students",
            "gauge",
            "Students (ranks) connected now, by group.",
            ("group",),
        )
        for group, n in sorted(by_group.items()):
            gauge.add(n, group)
        out.append(gauge)
        out.append(
            Metric(
                "pantheon_teacher_credits_in_flight",
                "gauge",
                "Credits the connected students granted and the teacher has not used yet: DATA "
                "messages it may send now without waiting (0: every student's buffer is full).",
            ).add(sum(int(s.get("credits", 0)) for s in students))
        )
        out.append(
            Metric(
                "pantheon_teacher_rounds_served",
                "gauge",
                "Rounds some student acknowledged as finished in the current serve call.",
            ).add(int(status.get("rounds_served", 0)))
        )
    mass = Metric(
        "pantheon_teacher_topk_mass",
        "histogram",
        "Probability mass the top-k entries keep per position (1 = nothing lost), by key; "
        "keys sent with TopK(log_softmax=True).",
        ("key",),
    )
    for key, hist in sorted(meters.topk_mass.items()):
        mass.add(hist, key)
    out.append(mass)
    return out
