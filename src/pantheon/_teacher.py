"""The Teacher: dumps knowledge to a file (offline) or serves it over TCP (online)."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ._chunks import COALESCE_BYTES
from ._errors import ClosedError, ConfigError
from ._files import KnowledgeWriter
from ._knowledge import check_fingerprint
from ._metrics import Metric, MetricsEndpoint, check_metrics_port
from ._online import ServeOptions, TeacherMeters, TeacherServer, teacher_metrics
from ._service import (
    RoundFactory,
    ServiceSpec,
    fingerprint_of,
    reader_round_factory,
    with_progress,
)
from ._util import check_int, check_port, check_seconds

__all__ = ["Teacher"]

log = logging.getLogger("pantheon")


class Teacher:
    """A teacher: writes its knowledge to a file (offline) or serves it to a student (online).

    Args:
        out_path: offline mode: the knowledge file to write (a directory of shards when
            ``max_shard_samples`` is set).
        out_port: online mode: the TCP port to listen on (``0`` picks a free port; read it back
            from :attr:`address`).
        host: interface to bind online (default ``"127.0.0.1"``). Anything but loopback needs a token.
        token: shared secret the student must prove it knows (default: ``PANTHEON_TOKEN``).
        compression: offline: ``None`` (default), ``"lz4"`` or ``"zstd"``.
        use_fp16: store / send float knowledge as float16; the description keeps the original
            dtype and the student casts back.
        codecs: per-key codecs, e.g. ``{"logits": TopK(20)}`` or ``{"feat": "bfloat16"}``.
        max_shard_samples: offline: start a new shard file after this many samples.
        timeout: seconds any single wait may last (default 300).
        heartbeat_interval: online: seconds of silence after which a PING is sent (default 1).
        heartbeat_timeout: online: seconds without a byte received after which a student is
            declared dead or frozen and its connection closed (default 10).
        coalesce_bytes: online: knowledge batches that are ready together are sent as one
            message of up to about this many bytes (default 4 MiB; a message may pass it by
            one batch): small ones concatenated, large ones (64 KiB and more) joined without a
            copy. Memory in flight per student is its credits times such a message.
        prefetch_batches: online: knowledge batches a round computes ahead of its slowest
            student, at most (default 10), plus what a fast reader's batches are read ahead
            to be sent together (up to 4 MiB of them); memory is bounded by it. The knowledge
            service's own bound is its ``buf_size``.
        max_students: online: students (processes: ranks of groups) connected at once at most
            (default 64); more are refused with an error that says so.
        fingerprint: what identifies this teacher, carried with its knowledge (file metadata,
            the stream's description) so that a student resuming from a checkpoint can tell
            that the teacher changed: a string, or a model to derive it from (a
            ``torch.nn.Module``, a ``TorchProgram`` / ``OnnxProgram``, a ``pathlib.Path`` of a
            model file; a ``str`` is the fingerprint itself). Default None: ``start_knowledge_service`` derives it from its ``program``
            (the SHA-256 of a torch module's state dict or of an ONNX / TorchScript file;
            plain callables have none).
        dataset_fingerprint: what identifies the data the teacher reads (a string, e.g. the
            dataset's name, version and split). Teachers merged by one student must agree on
            it. Default None: none.
        metrics_port: serve Prometheus metrics on ``http://metrics_host:PORT/metrics``
            (``0``: a free port, see :attr:`metrics_address`); default None: no metrics. Needs
            the ``metrics`` extra. The metrics are listed in ``docs/guide/operating.md``.
        metrics_host: the interface of the metrics endpoint (default ``"127.0.0.1"``).

    Exactly one of ``out_path`` and ``out_port`` must be given.
    """

    def __init__(
        self,
        out_path: str | os.PathLike[str] | None = None,
        out_port: int | None = None,
        *,
        host: str = "127.0.0.1",
        token: str | bytes | None = None,
        compression: str | None = None,
        use_fp16: bool = False,
        codecs: Mapping[str, Any] | None = None,
        max_shard_samples: int | None = None,
        timeout: float = 300.0,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
        coalesce_bytes: int = COALESCE_BYTES,
        prefetch_batches: int = 10,
        max_students: int = 64,
        fingerprint: Any = None,
        dataset_fingerprint: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if (out_path is None) == (out_port is None):
            raise ConfigError(
                "Teacher needs exactly one of out_path (offline: a knowledge file to write) or "
                f"out_port (online: a TCP port, 0 for any free one), got out_path={out_path!r}, "
                f"out_port={out_port!r}"
            )
        seconds = check_seconds("timeout", timeout)
        assert seconds is not None
        metrics = check_metrics_port(metrics_port, metrics_host)
        self.out_path = out_path
        self.out_port = out_port
        self._timeout = seconds
        self._use_fp16 = bool(use_fp16)
        self._codecs = dict(codecs or {})
        self._compression = compression
        self._max_shard_samples = max_shard_samples
        self._writer: KnowledgeWriter | None = None
        self._server: TeacherServer | None = None
        self._meters = TeacherMeters()
        self._metrics: MetricsEndpoint | None = None
        self._closed = False
        self._fingerprint_given = fingerprint is not None
        self._fingerprints = {
            "fingerprint": _fingerprint_arg(fingerprint),
            "dataset_fingerprint": check_fingerprint("dataset_fingerprint", dataset_fingerprint),
        }
        if out_port is not None:
            out_port = check_port("out_port", out_port)
            if compression is not None or max_shard_samples is not None:
                raise ConfigError(
                    "compression and max_shard_samples apply to offline teachers (out_path)"
                )
            self._server = TeacherServer(
                host=host,
                port=out_port,
                token=token,
                timeout=self._timeout,
                use_fp16=self._use_fp16,
                codecs=self._codecs,
                prefetch_batches=check_int("prefetch_batches", prefetch_batches, unit="batches"),
                heartbeat_interval=heartbeat_interval,
                heartbeat_timeout=heartbeat_timeout,
                coalesce_bytes=check_int("coalesce_bytes", coalesce_bytes, unit="bytes"),
                max_students=check_int("max_students", max_students, unit="students"),
            )
            self._server.set_fingerprints(self.fingerprints)
            self._meters = self._server.meters
        if metrics is not None:
            self._start_metrics(*metrics)

    # -- common ---------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """Whether this teacher serves a student over TCP."""
        return self._server is not None

    @property
    def address(self) -> str:
        """Online: the ``"host:port"`` actually listened on (the real port when ``out_port=0``)."""
        if self._server is None:
            raise ConfigError("an offline teacher (out_path) has no address")
        return str(self._server.address)

    @property
    def metrics_address(self) -> str | None:
        """Where ``/metrics`` is served (``"host:port"``), or None without ``metrics_port``."""
        return self._metrics.address if self._metrics is not None else None

    def _start_metrics(self, port: int, host: str) -> None:
        where = (
            f"the teacher at {self.address}" if self.online else f"the teacher of {self.out_path}"
        )
        try:
            self._metrics = MetricsEndpoint(self._metric_families, host=host, port=port, what=where)
        except BaseException:
            self.close()
            raise
        log.info("%s: metrics on http://%s/metrics", where, self._metrics.address)

    def _metric_families(self) -> list[Metric]:
        status = self._server.status() if self._server is not None else None
        return teacher_metrics(self.stats(), status, self._meters)

    @property
    def fingerprints(self) -> dict[str, str]:
        """The fingerprints this teacher's knowledge carries (``"fingerprint"``,
        ``"dataset_fingerprint"``; those known so far)."""
        return {k: v for k, v in self._fingerprints.items() if v is not None}

    @property
    def fingerprint(self) -> str | None:
        """This teacher's fingerprint: given, or derived by ``start_knowledge_service``."""
        return self._fingerprints["fingerprint"]

    def _derive_fingerprint(self, program: Any) -> None:
        if self._fingerprint_given:
            return
        self._fingerprints["fingerprint"] = fingerprint_of(program)
        if self._server is not None:
            self._server.set_fingerprints(self.fingerprints)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Teacher is closed; create a new one")

    def start(self, timeout: float | None = None) -> None:
        """Online: wait (at most ``timeout`` s, default the teacher's ``timeout``) until a student
        has connected and authenticated: one connected now, or one that came (and may have
        left) since the teacher started listening or since the previous ``start`` returned.
        Offline: nothing to wait for; the file is created with the first batch (optional, kept
        for the seed's programs)."""
        self._check_open()
        if self._server is not None:
            self._server.wait_for_student(self._timeout if timeout is None else float(timeout))

    def _open_writer(self) -> KnowledgeWriter:
        if self._writer is None:
            assert self.out_path is not None
            self._writer = KnowledgeWriter(
                self.out_path,
                compression=self._compression,
                use_fp16=self._use_fp16,
                codecs=self._codecs,
                max_shard_samples=self._max_shard_samples,
                fingerprint=self._fingerprints["fingerprint"],
                dataset_fingerprint=self._fingerprints["dataset_fingerprint"],
            )
            self._writer.observe = self._meters.observe_parts
        return self._writer

    def _offline_writer(self, what: str) -> KnowledgeWriter:
        self._check_open()
        if self._server is not None:
            raise ConfigError(
                f"{what} is for offline teachers (out_path); an online teacher streams knowledge "
                "with serve() or start_knowledge_service()"
            )
        return self._open_writer()

    # -- offline --------------------------------------------------------------------------

    def dump(self, knowledge: Mapping[str, Any], ids: Any = None) -> None:
        """Offline: append one knowledge batch (a dict of arrays sharing the first dimension).

        The first batch fixes the description; a later batch with other keys, dtypes or
        trailing shapes raises :class:`~pantheon.KnowledgeError` naming the key.
        """
        self._offline_writer("dump()").write(knowledge, ids)

    # -- streaming ------------------------------------------------------------------------

    def serve(
        self,
        reader: Callable[..., Iterable[Mapping[str, Any]]],
        times: int = 1,
        *,
        groups: int = 1,
    ) -> None:
        """Stream knowledge from your own loop: ``reader()`` yields knowledge batches.

        Online, one round per request, ``times`` rounds, each re-running ``reader()`` (a round
        can thus be resumed where a student stands); every student group gets every round,
        each rank its shard, from one run of the reader. Returns once ``groups`` groups have
        acknowledged the end of the last round. Offline, the one round is dumped to the file.
        A reader that takes one argument is called as ``reader(round_index)`` (0, 1, ...), so
        that it can shuffle each round with a seed of its own; sample ids stay the positions
        in the round.
        """
        if self._server is not None and not self._server.program_name:
            self._server.program_name = "a reader of knowledge batches (Teacher.serve)"
        self.serve_rounds(reader_round_factory(reader), times=times, groups=groups)

    def serve_rounds(self, make_round: RoundFactory, times: int = 1, *, groups: int = 1) -> None:
        """Like :meth:`serve`, from a round factory ``make_round(round_index, start_sample) ->
        chunks`` (round 0, sample 0 offline)."""
        self._check_open()
        times = check_int("times", times, unit="rounds")
        options = ServeOptions(groups=check_int("groups", groups, unit="student groups"))
        if self._server is not None:
            self._server.serve_rounds(make_round, times, options)
            return
        writer = self._offline_writer("serve()")
        for chunk in make_round(0, 0):
            writer.write(chunk.data, chunk.ids)

    def start_knowledge_service(
        self,
        feed_list: Sequence[str],
        schema: Mapping[str, str],
        program: Any,
        reader_config: Mapping[str, Any] | None,
        exe: Any = None,
        buf_size: int = 10,
        use_fp16: bool | None = None,
        times: int = 1,
        *,
        progress: bool | None = None,
        groups: int = 1,
        max_batch: int | None = None,
        max_delay: float = 0.002,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        """Run the teacher model over a reader and serve (online) or dump (offline) its knowledge.

        Args:
            feed_list: names of the reader's input fields, in order.
            schema: knowledge name -> source: an output of ``program`` or a feed name (passed through).
            program: a callable ``program(**feeds)``, a ``torch.nn.Module``, an ``.onnx`` path,
                a ``paddle.static.Program`` (``feed_list`` and ``schema`` may then hold its
                Variables, as in the seed) or a ``paddle.nn.Layer``.
            reader_config: ``{"sample_generator": g, "batch_size": B, "drop_last": True}``,
                ``{"sample_list_generator": g}`` or ``{"batch_generator": g}``; ``None`` serves
                queries only (online).
            exe: ``None`` (CPU), a device such as ``"cuda:0"`` (``"gpu:0"``), a list of
                devices, or a number of CPU workers (data-parallel, knowledge still in reader
                order); for Paddle also a place, or an ``Executor`` (as the seed: every visible
                GPU, or ``CPU_NUM`` CPU workers).
            buf_size: bound on reader batches in the prediction pipeline (read and not yet
                handed out), default 10: the backpressure of the service.
            use_fp16: store / send float knowledge as float16 (default: the constructor's setting).
            times: rounds to serve online (offline: one round is dumped).
            progress: show a progress bar of samples (default: only when stderr is a terminal).
            groups: online: student groups (training jobs, each with all its ranks) a round
                waits for before it starts, so that one prediction serves them all; the call
                returns once that many groups finished ``times`` rounds (default 1). In query
                mode, once that many groups came and every student said goodbye.
            max_batch: query mode: merge the queries of several students into one program call
                of at most this many samples (default ``None``: a call per query).
            max_delay: query mode: seconds to wait for more queries to merge (default 0.002).
            metrics_port / metrics_host: as ``Teacher(metrics_port=...)``, for a teacher
                built without them (the endpoint then lives until :meth:`close`).
        """
        from ._service import make_query_handler, make_round_factory

        self._check_open()
        metrics = check_metrics_port(metrics_port, metrics_host)
        if metrics is not None and self._metrics is None:
            self._start_metrics(*metrics)
        spec = ServiceSpec(tuple(feed_list), schema, program, reader_config, exe, buf_size)
        if use_fp16 is not None and bool(use_fp16) != self._use_fp16:
            if self._writer is not None and self._writer.num_batches:
                raise ConfigError(
                    "use_fp16 cannot change after knowledge was dumped: pass it to Teacher(...) "
                    "or to the first start_knowledge_service call"
                )
            self._use_fp16 = bool(use_fp16)
            if self._server is not None:
                self._server.described.use_fp16 = self._use_fp16
        self._derive_fingerprint(spec.program)
        if self._server is not None:
            self._server.program_name = _program_name(program)
        if spec.reader_config is None:
            if self._server is None:
                raise ConfigError(
                    "reader_config=None (query mode) needs an online teacher (out_port)"
                )
            options = ServeOptions(
                groups=check_int("groups", groups, unit="student groups"),
                max_batch=None if max_batch is None else check_int("max_batch", max_batch),
                max_delay=float(check_seconds("max_delay", max_delay) or 0.0),
            )
            handler = make_query_handler(spec, self._meters.predict_seconds)
            self._server.serve_queries(handler, options)
            return
        label = "dumping knowledge" if self._server is None else "serving knowledge"
        factory = make_round_factory(spec, self._meters.predict_seconds)
        make_round = with_progress(factory, label, progress)
        where = f"to {self.out_path}" if self._server is None else f"on {self._server.address}"
        log.info("knowledge service: %s %s, workers on %s", label, where, spec.devices)
        self.serve_rounds(make_round, times=1 if self._server is None else times, groups=groups)
        log.info("knowledge service done: %s", self.stats())

    # -- online messages ------------------------------------------------------------------

    def send(self, data: Any, timeout: float | None = None) -> None:
        """Online: send one message (None/bool/int/float/str/bytes/list/tuple/set/dict/arrays or
        tensors) to the student."""
        self._check_open()
        if self._server is None:
            raise ConfigError("send() needs an online teacher (out_port)")
        self._server.send_user(data, self._timeout if timeout is None else float(timeout))

    def recv(self, timeout: float | None = None) -> Any:
        """Online: receive one message the student sent with ``Student.send``."""
        self._check_open()
        if self._server is None:
            raise ConfigError("recv() needs an online teacher (out_port)")
        return self._server.recv_user(self._timeout if timeout is None else float(timeout))

    def stats(self) -> dict[str, Any]:
        """Counters: batches and samples written or sent, bytes sent (online) or on disk
        (offline, so far), and ``bytes_per_sample``. Online, ``batches`` counts the chunks
        sent: a fast reader's small batches are merged into chunks of up to 256 KiB."""
        if self._server is not None:
            out = dict(self._server.stats())
        else:
            w = self._writer
            shards = w.shards if w is not None else []
            out = {
                "batches": w.num_batches if w else 0,
                "samples": w.num_samples if w else 0,
                "bytes": sum(p.stat().st_size for p in shards if p.exists()),
            }
        out["bytes_per_sample"] = out["bytes"] / out["samples"] if out["samples"] else 0.0
        return out

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the file (offline) or stop serving (online). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._metrics is not None:
            self._metrics.close()
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fingerprint_arg(value: Any) -> str | None:
    """``Teacher(fingerprint=...)``: a string as it is, or one derived from a model."""
    if value is None or isinstance(value, str):
        return check_fingerprint("fingerprint", value)
    derived = fingerprint_of(value)
    if derived is None:
        raise ConfigError(
            f"fingerprint={type(value).__name__}: cannot derive a fingerprint from it; pass a "
            "string (e.g. the model's name and version), a torch.nn.Module or a model file path"
        )
    return derived


def _program_name(program: Any) -> str:
    """How ``pantheon status`` names a teacher's program."""
    if program is None:
        return "none (inputs passed through)"
    if isinstance(program, (str, os.PathLike)):
        return os.fspath(program)
    if inspect.isroutine(program):  # a function: its own name, not "builtins.function"
        return f"{program.__module__}.{program.__qualname__}"
    kind = type(program)
    return f"{kind.__module__}.{kind.__qualname__}"
