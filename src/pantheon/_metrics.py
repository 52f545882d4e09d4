"""Prometheus metrics: what teachers and students export on ``metrics_port=``.

The hot path keeps only the project's own counters (``stats()``) and a few fixed-bucket
:class:`Histogram` objects (one lock and a bisection per observation). At scrape time a
collector turns a snapshot of them into Prometheus metric families: nothing is counted twice,
and nothing is exported unless someone asks. :class:`MetricsEndpoint` serves ``/metrics`` from
a registry of its own (two teachers in one process do not clash), with ``prometheus-client``
(the ``metrics`` extra) imported only when an endpoint starts.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import ConfigError, missing_extra

__all__ = [
    "MASS_BUCKETS",
    "SECONDS_BUCKETS",
    "Histogram",
    "Metric",
    "MetricsEndpoint",
    "check_metrics_port",
]

SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of the time histograms: 0.5 ms to one minute."""

MASS_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
"""Upper bounds of the top-k mass histograms (probability kept per position, 0..1)."""


class Histogram:
    """A histogram with fixed upper bounds, cheap to feed from any thread.

    Args:
        buckets: increasing upper bounds; a last ``+Inf`` bucket is implied.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Count one observation."""
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        """Count every entry of ``values`` (vectorised: one pass)."""
        flat = np.asarray(values, dtype=np.float64).ravel()
        if flat.size == 0:
            return
        idx = np.searchsorted(np.asarray(self.bounds), flat, side="left")
        counts = np.bincount(idx, minlength=len(self._counts))
        total = float(flat.sum())
        with self._lock:
            for i, n in enumerate(counts.tolist()):
                self._counts[i] += n
            self._sum += total

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative ``(upper bound, count)`` pairs (the last ``"+Inf"``) and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out, total

    @property
    def count(self) -> int:
        """Observations so far."""
        with self._lock:
            return sum(self._counts)


@dataclass
class Metric:
    """One metric family as a collector reports it.

    Attributes:
        name: the Prometheus name (counters end in ``_total``).
        kind: ``"counter"``, ``"gauge"`` or ``"histogram"``.
        help: what it measures, with its unit.
        labels: label names, in order.
        samples: ``(label values, value)``; a histogram's value is a :class:`Histogram`.
    """

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], Any]] = field(default_factory=list)

    def add(self, value: Any, *labels: str) -> Metric:
        """Append one sample (returns self, to chain)."""
        self.samples.append((tuple(labels), value))
        return self


def _families(metrics: Sequence[Metric]) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    for m in metrics:
        family: Any
        if m.kind == "counter":
            family = CounterMetricFamily(m.name, m.help, labels=m.labels)
            for labels, value in m.samples:
                family.add_metric(list(labels), float(value))
        elif m.kind == "gauge":
            family = GaugeMetricFamily(m.name, m.help, labels=m.labels)
            for labels, value in m.samples:
                family.add_metric(list(labels), float(value))
        else:
            family = HistogramMetricFamily(m.name, m.help, labels=m.labels)
            for labels, hist in m.samples:
                buckets, total = hist.snapshot()
                family.add_metric(list(labels), buckets, total)
        yield family


class _Collector:
    """A prometheus-client collector over a callable returning :class:`Metric` objects."""

    def __init__(self, source: Callable[[], Sequence[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        yield from _families(self._source())


def check_metrics_port(port: Any, host: Any) -> tuple[int, str] | None:
    """Validate ``metrics_port`` / ``metrics_host``; None when metrics are off.

    Raises:
        ConfigError: a port outside 0..65535 (0 = a free one), or a host that is not a
            non-empty string.
    """
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ConfigError(
            f"metrics_port must be an integer in 0..65535 (0 = any free port) or None (no "
            f"metrics), got {port!r}"
        )
    if not isinstance(host, str) or not host:
        raise ConfigError(f"metrics_host must be an interface such as '127.0.0.1', got {host!r}")
    return port, host


class MetricsEndpoint:
    """``/metrics`` over HTTP for one teacher or student, from a registry of its own.

    Args:
        source: returns the metrics at scrape time (called in the HTTP server's thread).
        host: interface to bind (the callers default to ``"127.0.0.1"``).
        port: TCP port (0 = a free one; :attr:`address` tells which).
        what: who serves, for error messages (``"the teacher at 127.0.0.1:5000"``).

    Raises:
        MissingDependencyError: ``prometheus-client`` is not installed (the ``metrics`` extra).
        ConfigError: the port cannot be bound (in use, or not allowed).
    """

    def __init__(
        self, source: Callable[[], Sequence[Metric]], *, host: str, port: int, what: str
    ) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise missing_extra("prometheus-client", "metrics", feature="metrics_port") from None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(source))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"{what}: cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose "
                "another metrics_port (0 picks a free one)"
            ) from None
        self._closed = False
        bound = self._server.server_address
        where = f"[{host}]" if ":" in host else host
        self.address = f"{where}:{bound[1]}"

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._closed:
            return
        self._closed = True
        server = self._server
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5.0)
