"""The Student: registers teachers, merges and re-batches their knowledge for a training loop."""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

from .._errors import ClosedError, ConfigError
from .._knowledge import Description
from .._util import check_int, check_seconds
from .._wire import Heartbeat
from .assembler import Assembler, AssemblerStopped, QueryAssembler, RoundAssembler
from .fingerprints import check_teachers
from .formats import RaggedFormat, format_batch
from .merge import MergePlan, build_plan
from .observe import StudentMeters, start_metrics, student_metrics, student_stats
from .sources import FileSource, OnlineCapable, Source, online_sources, only_online
from .state import Resumable, check_shard

__all__ = ["Student"]

log = logging.getLogger("pantheon")

_OPEN: weakref.WeakSet[Student] = weakref.WeakSet()  # said goodbye to at interpreter exit


class Student(Resumable):
    """The student: receives, merges and re-batches the knowledge of its teachers.

    Args:
        merge_strategy: key -> how to merge a key that several teachers produce: ``"sum"``,
            ``"mean"``, ``"max"``, ``"min"``, ``("mean", [w0, w1, ...])`` (weighted mean, one weight
            per teacher holding the key, in registration order) or a callable
            ``f(list_of_arrays) -> array``. A key shared without a strategy is an error.
        token: shared secret for online teachers (default: the ``PANTHEON_TOKEN`` environment
            variable, else none).
        timeout: seconds any single wait may last (connecting, a teacher's next batch), default 300.
        read_ahead: student batches assembled ahead of the training loop (default 8).
        sparse_topk: hand knowledge stored with the top-k codec as
            :class:`~pantheon.SparseTopK` (values + indices, for a loss such as
            :func:`pantheon.torch.topk_kl`) instead of densifying it (default False). Sparse
            keys cannot be merged across teachers.
        heartbeat_interval: online: seconds of silence after which a PING is sent (default 1).
        heartbeat_timeout: online: seconds without a byte received after which a teacher is
            declared dead or frozen and reconnected to (default 10).
        group: the training job this student belongs to (default ``"default"``); an online
            teacher serves several groups at once, each the whole round.
        rank / world_size: this process's rank in its group and the group's number of
            processes (defaults 0 and 1): sample ``i`` of a round goes to rank
            ``i % world_size``, for online and offline teachers alike.
            :func:`pantheon.torch.distributed_rank` reads them from ``torch.distributed``.
        credits: online: knowledge messages a teacher may have in flight to this student
            (default 16): the student's receive buffer.
        window_bytes: online: bytes of knowledge a teacher may have in flight to this
            student, at most (counted as the teacher produced them, before codecs; one batch
            may pass it, or the ~256 KiB a teacher merges a fast reader's small batches
            into); default None: credits alone bound them, up to ``credits`` x the
            teacher's ``coalesce_bytes`` (4 MiB). Messages are cut to fit the window.
        transport: online: ``"auto"`` (default) gets knowledge through shared memory from a
            teacher on the same host (Linux; the knowledge arrays are views of it, valid as
            long as they are held) and over TCP otherwise; ``"tcp"`` always uses the socket;
            ``"shm"`` requires shared memory and fails with the reason when the teacher cannot
            use it. ``PANTHEON_SHM=0`` in the environment of either side turns it off.
        metrics_port / metrics_host: serve Prometheus metrics on
            ``http://metrics_host:PORT/metrics`` (``0``: a free port, see
            :attr:`metrics_address`; host default ``"127.0.0.1"``); default None: none. Needs
            the ``metrics`` extra; the metrics are listed in ``docs/guide/operating.md``.

    Usage, as the seed::

        student = Student(merge_strategy={"result": "sum"})
        student.register_teacher(in_path="teacher1.arrow")
        student.register_teacher(in_path="teacher2.arrow")
        student.start()
        gen = student.get_knowledge_generator(batch_size=32)
        for batch in gen():
            ...
    """

    def __init__(
        self,
        merge_strategy: Mapping[str, Any] | None = None,
        *,
        token: str | bytes | None = None,
        timeout: float = 300.0,
        read_ahead: int = 8,
        sparse_topk: bool = False,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
        group: str = "default",
        rank: int = 0,
        world_size: int = 1,
        credits: int = 16,
        window_bytes: int | None = None,
        transport: str = "auto",
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if merge_strategy is not None and not isinstance(merge_strategy, Mapping):
            raise ConfigError(
                f"merge_strategy must be a dict of key -> strategy, got {type(merge_strategy).__name__}"
            )
        seconds = check_seconds("timeout", timeout)
        assert seconds is not None
        self._merge_strategy = dict(merge_strategy or {})
        self._token = token
        self._timeout = seconds
        self._read_ahead = check_int("read_ahead", read_ahead, unit="batches")
        self._qids = itertools.count()  # query ids, never reused by a later generator
        self._sparse_topk = bool(sparse_topk)
        self._heartbeat = Heartbeat(heartbeat_interval, heartbeat_timeout)
        self._group, self._rank, self._world = check_shard(group, rank, world_size)
        self._credits = check_int("credits", credits, unit="messages")
        from .._online import check_transport, check_window

        self._window = check_window(window_bytes)
        self._transport = check_transport(transport)
        self._sources: list[Source] = []
        self._plan: MergePlan | None = None
        self._started = False
        self._closed = False
        self._round = 0  # rounds finished
        self._sample_in_round = 0  # samples of the current round handed to the training loop
        self._assembler: Assembler | None = None
        self._resumed: list[dict[str, str]] = []  # fingerprints of a loaded state_dict
        self._lock = threading.Lock()
        self._stats = {"batches": 0, "samples": 0, "rounds": 0, "wait_seconds": 0.0}
        self._who = f"student {group!r} rank {self._rank}"
        self._meters = StudentMeters()
        self._metrics = start_metrics(
            metrics_port,
            metrics_host,
            self._who,
            lambda: student_metrics(self.stats(), self._meters),
        )
        self._pid = os.getpid()  # a forked child does not say goodbye for its parent
        _OPEN.add(self)

    @property
    def metrics_address(self) -> str | None:
        """Where ``/metrics`` is served (``"host:port"``), or None without ``metrics_port``."""
        return self._metrics.address if self._metrics is not None else None

    # -- set-up ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Student is closed; create a new one")

    def register_teacher(
        self,
        in_path: str | os.PathLike[str] | None = None,
        in_address: str | list[str] | None = None,
        *,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> int:
        """Register a teacher and return its id (0, 1, ... in registration order).

        Args:
            in_path: an offline teacher's knowledge file (or directory of shards).
            in_address: an online teacher's ``"host:port"``, a list of the addresses of
                replicas of one teacher (queries are spread over them; they take over from
                each other), or a pool's ``"ray://NAME"`` (:mod:`pantheon.ray`).
            cache_path: online: a directory where the first round received is written as the
                training loop reads it; later rounds are replayed from it, so the teacher
                serves ``times=1`` and may then be gone. With ``world_size > 1`` each rank
                writes ``cache_path/rank-R-of-W``.

        Exactly one of ``in_path`` and ``in_address`` must be given.
        """
        self._check_open()
        if self._started:
            raise ConfigError("register_teacher() must be called before start()")
        if (in_path is None) == (in_address is None):
            raise ConfigError(
                "register_teacher() needs exactly one of in_path (offline knowledge file) or "
                f"in_address (online teacher 'host:port'), got in_path={in_path!r}, "
                f"in_address={in_address!r}"
            )
        index = len(self._sources)
        if in_path is not None:
            shard = (self._rank, self._world)
            self._sources.append(
                FileSource(index, in_path, sparse_topk=self._sparse_topk, shard=shard)
            )
        else:
            assert in_address is not None
            source = self._online_source(index, in_address)
            if cache_path is not None:
                from .cache import CachedSource

                source = CachedSource(source, cache_path, self._rank, self._world)  # type: ignore[arg-type]
            self._sources.append(source)
        log.info("registered %s", self._sources[-1].name)
        return index

    def _online_source(self, index: int, address: str | list[str]) -> Source:
        from .._online import open_source  # "host:port" addresses, or a pool ("ray://NAME")

        return open_source(
            index,
            address,
            token=self._token,
            timeout=self._timeout,
            sparse_topk=self._sparse_topk,
            heartbeat=self._heartbeat,
            group=self._group,
            rank=self._rank,
            world_size=self._world,
            credits=self._credits,
            window=self._window,
            transport=self._transport,
        )

    def start(self, timeout: float | None = None) -> None:
        """Open every offline teacher and connect to every online one (waits ``timeout`` s).

        Teachers may start before or after the student: connecting retries until ``timeout``
        (default: the student's ``timeout``).
        """
        self._check_open()
        if self._started:
            return
        if not self._sources:
            raise ConfigError("no teacher registered: call register_teacher() before start()")
        wait = self._timeout if timeout is None else float(timeout)
        for source in self._sources:
            source.start(wait)
        self._started = True

    def _ensure_plan(self, timeout: float | None = None) -> MergePlan:
        if not self._started:
            self.start()
        if self._plan is None:
            wait = self._timeout if timeout is None else float(timeout)
            descs = [s.desc(wait) for s in self._sources]
            check_teachers(self._sources, self._resumed)
            self._plan = build_plan(descs, [s.name for s in self._sources], self._merge_strategy)
        return self._plan

    def get_knowledge_desc(self, timeout: float | None = None) -> Description:
        """The merged description: ``{name: {"shape", "dtype", "lod_level"}}`` in order.

        Online teachers are waited for (at most ``timeout`` s) until they know their description.
        """
        self._check_open()
        return {k: dict(v) for k, v in self._ensure_plan(timeout).desc.items()}

    def get_knowledge_qsize(self) -> int:
        """Merged batches ready and waiting in the read-ahead queue."""
        assembler = self._assembler
        return assembler.qsize() if assembler is not None else 0

    # -- knowledge ------------------------------------------------------------------------

    def get_knowledge_generator(
        self,
        batch_size: int,
        drop_last: bool = False,
        *,
        ragged: RaggedFormat = "ragged",
        timeout: float | None = None,
        queries: Any = None,
    ) -> Callable[[], Iterator[dict[str, Any]]]:
        """A reader creator over one round of knowledge, used as in the seed.

        ``gen = student.get_knowledge_generator(batch_size=32)`` then ``for batch in gen():``.
        Each batch is a dict of arrays with ``batch_size`` samples (the last may be shorter
        unless ``drop_last``). Calling ``gen()`` iterates the student's current round from where
        it stands: a round left unfinished (the loop broke out) is continued by the next call,
        and a finished round is followed by the next one (online teachers serve ``times`` rounds;
        offline files are replayed).

        Args:
            batch_size: samples per batch (> 0).
            drop_last: drop the last batch of a round if shorter than ``batch_size``.
            ragged: how variable-length fields are handed out: ``"ragged"`` (a
                :class:`~pantheon.Ragged`, default), ``"padded"`` (a pair ``(padded_array,
                lengths)``, padding with 0) or ``"list"`` (a list of per-sample arrays).
            timeout: seconds to wait for each batch (default: the student's ``timeout``).
            queries: query mode: an iterable of the student's own batches (dicts of arrays).
                They are re-batched to ``batch_size``, sent to every (online) teacher with
                several in flight, and each yielded batch holds the query's fields plus the
                merged knowledge answering it, in order.
        """
        self._check_open()
        batch_size = check_int("batch_size", batch_size, unit="samples")
        if ragged not in ("ragged", "padded", "list"):
            raise ConfigError(f"ragged must be 'ragged', 'padded' or 'list', got {ragged!r}")
        wait = self._timeout if timeout is None else float(timeout)
        if queries is not None:

            def query_reader() -> Iterator[dict[str, Any]]:
                return self._iterate_queries(queries, batch_size, bool(drop_last), ragged, wait)

            return query_reader
        self._ensure_plan()

        def reader() -> Iterator[dict[str, Any]]:
            return self._iterate_round(batch_size, bool(drop_last), ragged, wait)

        return reader

    def _iterate_round(
        self, batch_size: int, drop_last: bool, ragged: RaggedFormat, timeout: float
    ) -> Iterator[dict[str, Any]]:
        self._check_open()
        plan = self._ensure_plan()

        def make() -> Assembler:
            rnd, at = self._round, self._sample_in_round
            streams = [s.open_round(rnd, at) for s in self._sources]
            how = f"resumed at sample {at} of this rank" if at else "started"
            log.info("%s: round %d %s", self._who, rnd, how)
            return RoundAssembler(
                streams,
                [s.name for s in self._sources],
                plan,
                batch_size=batch_size,
                drop_last=drop_last,
                maxsize=self._read_ahead,
                timeout=timeout,
                shard=(self._rank, self._world, self._sample_in_round),
            )

        return self._drain(self._replace_assembler(make), ragged, timeout, in_round=True)

    def _replace_assembler(self, make: Callable[[], Assembler]) -> Assembler:
        """Stop the running read-ahead (a generator left mid-way) and start ``make()``'s."""
        with self._lock:
            old, self._assembler = self._assembler, None  # its generator sees it replaced
            if old is not None:
                old.stop()
            self._assembler = make()
            return self._assembler

    def _drain(
        self, assembler: Assembler, ragged: RaggedFormat, timeout: float, *, in_round: bool
    ) -> Iterator[dict[str, Any]]:
        """Hand the assembler's batches to the training loop, counting; stop it at the end."""
        try:
            while True:
                self._check_current(assembler)
                t0 = time.perf_counter()
                try:
                    chunk = assembler.get(timeout)
                except AssemblerStopped:
                    self._check_current(assembler)  # replaced or closed: says which
                    raise
                waited = time.perf_counter() - t0
                self._stats["wait_seconds"] += waited
                with self._lock:  # a newer generator starts from what this one handed out
                    self._check_current(assembler)
                    if chunk is None:
                        if in_round:
                            self._finish_round()
                        return
                    n = len(chunk.ids)
                    if in_round:
                        self._sample_in_round += n
                self._meters.wait_seconds.observe(waited)
                self._stats["batches"] += 1
                self._stats["samples"] += n
                yield format_batch(chunk.data, ragged)
        finally:
            assembler.stop()
            with self._lock:
                if self._assembler is assembler:
                    self._assembler = None

    def _check_current(self, assembler: Assembler) -> None:
        """A generator whose read-ahead was replaced (a newer generator) or closed ends."""
        if self._closed:
            raise ClosedError("this Student was closed; its knowledge generators have ended")
        if self._assembler is not assembler:
            raise ConfigError(
                "this knowledge generator was replaced by a newer one (another gen() call, or "
                "load_state_dict): only one generator of a student runs at a time; the newer "
                "one continues from the last batch this one handed out"
            )

    def _finish_round(self) -> None:
        for source in self._sources:
            if isinstance(source, OnlineCapable):
                source.ack_round(self._round)
        n = self._sample_in_round
        log.info("%s: round %d finished (%d samples of this rank)", self._who, self._round, n)
        self._round += 1
        self._sample_in_round = 0
        self._stats["rounds"] += 1

    def _iterate_queries(
        self, queries: Any, batch_size: int, drop_last: bool, ragged: RaggedFormat, timeout: float
    ) -> Iterator[dict[str, Any]]:
        self._check_open()
        if not self._started:
            self.start()
        only_online(self._sources)

        def make() -> Assembler:
            names, plan_for = [s.name for s in self._sources], partial(self._ensure_plan, timeout)
            return QueryAssembler(
                self._sources, names, plan_for, queries, batch_size=batch_size,
                drop_last=drop_last, window=self._read_ahead, maxsize=self._read_ahead,
                timeout=timeout, qids=self._qids,
            )  # fmt: skip

        return self._drain(self._replace_assembler(make), ragged, timeout, in_round=False)

    # -- messages -------------------------------------------------------------------------

    def send(
        self, data: Any, teacher_ids: int | list[int] | None = None, timeout: float | None = None
    ) -> None:
        """Send one message (None/bool/int/float/str/bytes/list/tuple/set/dict/arrays) to teachers.

        Args:
            data: the value (never pickled).
            teacher_ids: a teacher id or a list of them; default: every online teacher.
            timeout: seconds to wait for a connection (default: the student's ``timeout``).
        """
        self._check_open()
        if not self._started:
            self.start()
        wait = self._timeout if timeout is None else float(timeout)
        for source in online_sources(self._sources, teacher_ids):
            source.send_user(data, wait)

    def recv(self, teacher_id: int, timeout: float | None = None) -> Any:
        """Receive one message that teacher ``teacher_id`` sent with ``Teacher.send``."""
        self._check_open()
        if not self._started:
            self.start()
        wait = self._timeout if timeout is None else float(timeout)
        return online_sources(self._sources, teacher_id)[0].recv_user(wait)

    def stats(self) -> dict[str, Any]:
        """Counters: batches, samples and rounds handed out, seconds the training loop waited
        for knowledge (``wait_seconds``), ``qsize``, bytes received, reconnections, knowledge
        messages through shared memory (``shm_messages``), the transport of each online
        connection (``transport``: ``{teacher: "shm" | "tcp"}``), and ``teachers``: each
        teacher's own figures keyed by its name (``batches`` and ``samples`` it delivered,
        ``bytes``, ``reconnects``, ...)."""
        return student_stats(self._stats, self.get_knowledge_qsize(), self._sources)

    # -- lifetime -------------------------------------------------------------------------

    def close(self, *, resume: bool = False) -> None:
        """Stop reading and disconnect from every teacher (idempotent).

        Args:
            resume: online teachers wait for this student to come back (a new process that
                ``load_state_dict``-s this one's position). By default the student says
                goodbye: a teacher whose students all left before its last round ends at once
                with an error that says so. After its goodbye the student reads on until each
                teacher closes the connection, at most 2 s in all, so that the goodbye is read.
        """
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        if self._metrics is not None:
            self._metrics.close()
        if self._assembler is not None:
            self._assembler.stop()
            self._assembler = None
        for source in self._sources:
            if isinstance(source, OnlineCapable):
                source.close(goodbye=not resume)
            else:
                source.close()

    def __enter__(self) -> Student:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:  # dropped without close(): it may be coming back
                self.close(resume=True)
        except Exception:  # noqa: S110 - best effort at interpreter shutdown
            pass


@atexit.register
def _goodbye_at_exit() -> None:
    """A program that ends without ``close()`` is done: its teachers are told so (a student
    that is to be resumed closes with ``close(resume=True)``; a killed one says nothing)."""
    for student in [s for s in _OPEN if s._pid == os.getpid()]:
        student.close()
