"""The write-through cache: an online teacher's first round kept in a knowledge file.

``register_teacher(in_address=..., cache_path=PATH)`` wraps the online source in a
:class:`CachedSource`. Round 0 comes from the teacher and every chunk the student reads is
also written to the cache; rounds after it are replayed from the cache, so the teacher may be
gone (it serves ``times=1``). A student restarted in round 0 replays what the cache holds and
asks the teacher only from where the cache stops.

On disk, ``PATH`` (``PATH/rank-R-of-W`` for rank ``R`` of a group of ``W``) is a directory of
ordinary knowledge files (``part-00000.arrow``, one per run of the student, with the samples'
original ids) and ``round.json``, written once the round is complete:
``{"complete": true, "samples": N, "cached": n, "rank": R, "world_size": W}`` (``N``: the
round's samples, all ranks; ``n``: this rank's).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._chunks import slice_chunk
from .._codecs import SparseSamples, SparseTopK
from .._errors import ConfigError, FileFormatError, TeacherError
from .._files import KnowledgeFile, KnowledgeWriter, repair, shard_paths
from .._knowledge import Chunk, Description
from .sources import OnlineCapable, RoundStream

__all__ = ["CachedSource"]

log = logging.getLogger("pantheon")

_MARKER = "round.json"
_PART = "part-{:05d}.arrow"


class _CachingRound:
    """Round 0: what the cache holds, then the teacher's chunks, each written to the cache."""

    def __init__(
        self,
        source: CachedSource,
        replay: Iterator[Chunk],
        online: RoundStream,
        writer: KnowledgeWriter,
        skip_below: int,
    ) -> None:
        self._source = source
        self._replay: Iterator[Chunk] | None = replay
        self._online = online
        self._writer = writer
        self._skip_below = skip_below  # sample ids the cache lacked but the student had

    def next_chunk(self, timeout: float, stop: threading.Event | None = None) -> Chunk | None:
        if self._replay is not None:
            chunk = next(self._replay, None)
            if chunk is not None:
                return chunk
            self._replay = None
        while True:
            chunk = self._online.next_chunk(timeout, stop)
            if chunk is None:
                self._source.finish(self._writer, self._online.known_samples())
                return None
            self._source.write(self._writer, chunk)  # every sample: the cache has no gap
            if int(chunk.ids[-1]) >= self._skip_below:  # from the student's position on
                first = int(np.searchsorted(chunk.ids, self._skip_below))
                return slice_chunk(chunk, first, len(chunk.ids))  # the chunk itself from 0

    def known_samples(self) -> int:
        return self._online.known_samples()

    def close(self) -> None:
        try:
            self._online.close()
        finally:
            self._writer.close()


class _Replay:
    """A later round: the cache replayed (this rank's shard, in order)."""

    def __init__(self, file: KnowledgeFile, start: int, samples: int) -> None:
        self._chunks = file.iter_chunks(start)
        self._samples = samples

    def next_chunk(self, timeout: float, stop: threading.Event | None = None) -> Chunk | None:
        return next(self._chunks, None)

    def known_samples(self) -> int:
        return self._samples

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if callable(close):
            close()


class CachedSource:
    """An online teacher whose first round is cached in a knowledge file (module docstring).

    Args:
        online: the online teacher.
        path: the cache directory (a rank's own below it when ``world_size > 1``).
        rank / world_size: this student's shard.
    """

    def __init__(self, online: OnlineCapable, path: str | os.PathLike[str], rank: int, world: int):
        self._online = online
        base = Path(path)
        self.dir = base if world == 1 else base / f"rank-{rank:05d}-of-{world:05d}"
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"cache_path {str(self.dir)!r} is a file; give a directory")
        self._rank, self._world = rank, world
        self.name = f"{online.name} (cached in {self.dir})"
        self._file: KnowledgeFile | None = None
        self._connected = False
        self._done_told = True

    # ------------------------------------------------------------------ the cache on disk

    def _marker(self) -> dict[str, Any] | None:
        try:
            info = json.loads((self.dir / _MARKER).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise FileFormatError(
                f"{self.dir / _MARKER}: unreadable ({exc}); remove the cache"
            ) from None
        if not isinstance(info, dict) or info.get("complete") is not True:
            return None
        if (info.get("rank"), info.get("world_size")) != (self._rank, self._world):
            raise ConfigError(
                f"the cache {self.dir} was written by rank {info.get('rank')} of "
                f"{info.get('world_size')}, not rank {self._rank} of {self._world}"
            )
        return info

    def _parts(self) -> list[Path]:
        return shard_paths(self.dir) if self.dir.is_dir() else []

    def _open(self) -> KnowledgeFile | None:
        """The cache as it is (repaired if its last run was cut short), or None if empty."""
        if self._file is not None:
            self._file.close()
            self._file = None
        parts = self._parts()
        if not parts:
            return None
        for part in parts:
            if repair(part) == 0:
                part.unlink()  # a run stopped before its first batch
        if self._parts():
            self._file = KnowledgeFile(self.dir)
        return self._file

    def write(self, writer: KnowledgeWriter, chunk: Chunk) -> None:
        """Append a chunk the student read to the cache."""
        data = {
            k: v.dense() if isinstance(v, (SparseTopK, SparseSamples)) else v
            for k, v in chunk.data.items()
        }
        writer.write(data, chunk.ids)

    def finish(self, writer: KnowledgeWriter, samples: int) -> None:
        """Round 0 is complete: close the run's file and mark the cache complete."""
        writer.close()
        cached = 0
        for part in self._parts():
            with KnowledgeFile(part) as kf:  # its mapping goes now, not with the collector
                cached += kf.num_samples
        info = {
            "complete": True,
            "samples": samples,
            "cached": cached,
            "rank": self._rank,
            "world_size": self._world,
        }
        tmp = self.dir / (_MARKER + ".tmp")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, self.dir / _MARKER)
        log.info("%s: round 0 cached (%d samples of this rank)", self.name, cached)

    # ------------------------------------------------------------------ Source protocol

    def start(self, timeout: float) -> None:
        """Connect to the teacher. With a complete cache the teacher may be gone: it is tried
        for at most 2 s, and, if it is there, checked against the cache and told that round
        0 is done (it may still wait for that)."""
        if self._marker() is not None and self._open() is not None:
            try:
                self._online.start(min(timeout, 2.0))
            except TeacherError:
                log.info("%s: the teacher is gone; replaying the cache", self.name)
                return
            self._connected = True
            self._done_told = False
            return
        self._online.start(timeout)
        self._connected = True

    def desc(self, timeout: float) -> Description:
        """The teacher's description; a cache of other knowledge is refused."""
        cache = self._file if self._file is not None else self._open()
        if not self._connected:
            if cache is None:
                raise ConfigError(f"{self.name}: the cache is gone; register the teacher again")
            return cache.desc
        desc = self._online.desc(timeout)
        if cache is not None and cache.desc != desc:
            raise ConfigError(
                f"the cache {self.dir} holds knowledge described as {cache.desc}, but "
                f"{self._online.name} describes {desc}: it was written from another teacher; "
                "remove the cache or give another cache_path"
            )
        return desc

    def open_round(self, round_index: int, start_sample: int) -> RoundStream:
        """Round 0 (or any round while the cache is incomplete) from the teacher through the
        cache; later rounds from the cache."""
        info = self._marker()
        cache = self._open()
        if info is not None and cache is not None:
            if self._connected and not self._done_told:
                self._done_told = True
                self._online.ack_round(0)
            if start_sample > cache.num_samples:
                raise ConfigError(
                    f"the student's position {start_sample} is past the end of the cache "
                    f"{self.dir} ({cache.num_samples} samples of this rank)"
                )
            return _Replay(cache, start_sample, int(info.get("samples", cache.num_samples)))
        if round_index > 0:
            raise ConfigError(
                f"{self.name}: round {round_index} is asked for, but the cache of round 0 is "
                f"incomplete; finish round 0 first (or remove the cache to stream every round)"
            )
        cached = cache.num_samples if cache is not None else 0
        replay = (
            cache.iter_chunks(start_sample)
            if cache is not None and start_sample < cached
            else iter(())
        )
        # from the end of the cache, even for a student further on (it resumed past what the
        # cache holds: added later, or cut short), so that the cache has no gap; the samples
        # it already had are written, not handed out again
        online = self._online.open_round(0, cached)
        writer = KnowledgeWriter(
            self.dir / _PART.format(len(self._parts())), codecs=self._codec_specs()
        )
        skip = self._rank + start_sample * self._world if start_sample > cached else -1
        return _CachingRound(self, replay, online, writer, skip)

    def _codec_specs(self) -> dict[str, Any]:
        codecs = getattr(self._online, "machine", None)
        return dict(getattr(codecs, "codecs", {}) or {})

    def ack_round(self, round_index: int) -> None:
        """The teacher serves round 0 only; later rounds come from the cache."""
        if round_index == 0 and self._connected:
            self._online.ack_round(0)

    def stats(self) -> Mapping[str, Any]:
        return self._online.stats()

    def fingerprints(self) -> dict[str, str]:
        """The teacher's fingerprints, or the cache's when the teacher is gone."""
        if self._connected:
            return self._online.fingerprints()  # type: ignore[attr-defined, no-any-return]
        return self._file.fingerprints if self._file is not None else {}

    # queries and messages go to the teacher itself
    def submit(self, qid: int, query: Chunk) -> None:
        self._online.submit(qid, query)

    def answer(self, qid: int, timeout: float, stop: threading.Event | None = None) -> Chunk:
        return self._online.answer(qid, timeout, stop)

    def forget(self, qids: list[int]) -> None:
        self._online.forget(qids)

    def send_user(self, data: Any, timeout: float) -> None:
        self._online.send_user(data, timeout)

    def recv_user(self, timeout: float) -> Any:
        return self._online.recv_user(timeout)

    def close(self, goodbye: bool = True) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._online.close(goodbye=goodbye)
