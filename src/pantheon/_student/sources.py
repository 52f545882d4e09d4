"""Where a student's knowledge comes from: one :class:`Source` per registered teacher.

A source opens *rounds*: ``open_round(round_index, start_sample)`` returns a
:class:`RoundStream` whose ``next_chunk`` yields the round's chunks from ``start_sample`` on,
then ``None`` once the round has explicitly ended. Offline sources replay their file every
round; online sources ask their teacher for the round (see ``_online_student.py``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .._chunks import shard_positions, stride_chunk
from .._errors import ConfigError
from .._files import KnowledgeFile
from .._knowledge import Chunk, Description
from .._util import check_int

__all__ = [
    "FileSource",
    "OnlineCapable",
    "RoundStream",
    "Source",
    "online_sources",
    "only_online",
]


@runtime_checkable
class RoundStream(Protocol):
    """The chunks of one round of one teacher."""

    def next_chunk(self, timeout: float, stop: threading.Event | None = None) -> Chunk | None:
        """The next chunk, or ``None`` when the round has ended. Waits at most ``timeout`` s;
        once ``stop`` is set, a wait for a teacher ends within half a second with
        :class:`~pantheon.ClosedError` (the round's reader stopped)."""
        ...

    def known_samples(self) -> int:
        """How many samples the round has, as far as known now (exact once it ended)."""
        ...

    def close(self) -> None:
        """Abandon the rest of the round."""
        ...


@runtime_checkable
class Source(Protocol):
    """One registered teacher, as the student sees it."""

    name: str

    def start(self, timeout: float) -> None:
        """Open or connect, waiting at most ``timeout`` seconds."""
        ...

    def desc(self, timeout: float) -> Description:
        """The teacher's knowledge description (original dtypes)."""
        ...

    def open_round(self, round_index: int, start_sample: int) -> RoundStream:
        """Start streaming round ``round_index`` from sample ``start_sample``."""
        ...

    def stats(self) -> Mapping[str, Any]:
        """Counters of this teacher (bytes received, reconnects, ...)."""
        ...

    def close(self) -> None:
        """Release everything."""
        ...


@runtime_checkable
class OnlineCapable(Source, Protocol):
    """A source that is a live teacher: it answers queries, exchanges user messages and is told
    when the training loop has consumed a round."""

    def submit(self, qid: int, query: Chunk) -> None:
        """Send query ``qid`` (the student's own feed batch)."""
        ...

    def answer(self, qid: int, timeout: float, stop: threading.Event | None = None) -> Chunk:
        """The knowledge answering query ``qid`` (waits at most ``timeout`` s; once ``stop`` is
        set, within half a second with :class:`~pantheon.ClosedError`)."""
        ...

    def forget(self, qids: list[int]) -> None:
        """Drop queries ``qids`` whose answers nobody will take (their generator was left):
        answers still to come for them are ignored."""
        ...

    def ack_round(self, round_index: int) -> None:
        """Tell the teacher that the training loop holds every sample of ``round_index``."""
        ...

    def send_user(self, data: Any, timeout: float) -> None:
        """Send one user message to the teacher."""
        ...

    def recv_user(self, timeout: float) -> Any:
        """The next user message from the teacher."""
        ...

    def close(self, goodbye: bool = True) -> None:
        """Disconnect; ``goodbye`` tells the teacher this student will not come back."""
        ...


class _FileRound:
    """One round of a knowledge file: this rank's shard of it, from its position on."""

    def __init__(
        self, file: KnowledgeFile, start: int, rank: int, world: int, stats: dict[str, int]
    ) -> None:
        self._file = file
        self._stats = stats
        self._samples = file.num_samples
        self._chunks = self._shard(file.iter_chunks(start), start, rank, world)

    @staticmethod
    def _shard(chunks: Iterator[Chunk], start: int, rank: int, world: int) -> Iterator[Chunk]:
        if world == 1:
            yield from chunks
            return
        position = start  # sharding is by position in the file: the round's sample number
        for chunk in chunks:
            n = len(chunk.ids)
            part = stride_chunk(chunk, shard_positions(position, n, start, rank, world))
            position += n
            if len(part.ids):
                yield part

    def next_chunk(self, timeout: float, stop: threading.Event | None = None) -> Chunk | None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            self._stats["batches"] += 1
            self._stats["samples"] += len(chunk.ids)
        return chunk

    def known_samples(self) -> int:
        return self._samples

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class FileSource:
    """An offline teacher: a knowledge file (or a directory of shards), replayed every round.

    Args:
        index: the teacher id.
        path: the file or directory.
        sparse_topk: hand top-k knowledge in its sparse form.
        shard: ``(rank, world_size)``: rank ``r`` reads the samples at positions
            ``r, r + W, ...`` of the file (default ``(0, 1)``: all of them).
    """

    def __init__(
        self,
        index: int,
        path: str | os.PathLike[str],
        *,
        sparse_topk: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.path = Path(path)
        self._sparse_topk = sparse_topk
        self._rank, self._world = shard
        self.name = f"teacher {index} ({self.path})"
        self._file: KnowledgeFile | None = None
        self._stats = {"batches": 0, "samples": 0}

    def start(self, timeout: float) -> None:
        if self._file is None:
            self._file = KnowledgeFile(self.path, sparse_topk=self._sparse_topk)

    def _opened(self) -> KnowledgeFile:
        if self._file is None:
            raise ConfigError(f"{self.name} is not open: call Student.start() first")
        return self._file

    def desc(self, timeout: float) -> Description:
        return self._opened().desc

    def fingerprints(self) -> dict[str, str]:
        """The file's fingerprints (empty before :meth:`start`, or for a file without any)."""
        return self._file.fingerprints if self._file is not None else {}

    def open_round(self, round_index: int, start_sample: int) -> RoundStream:
        """This rank's shard of the file from its position ``start_sample``.

        Raises:
            ConfigError: the position is past the end of the shard (a state_dict of other
                knowledge).
        """
        file = self._opened()
        r, w = self._rank, self._world
        have = max(0, -(-(file.num_samples - r) // w))
        if start_sample > have:
            raise ConfigError(
                f"the student's position {start_sample} in round {round_index} is past the end "
                f"of {self.name}: rank {r} of {w} has {have} of its {file.num_samples} samples; "
                "was the state_dict saved with other knowledge?"
            )
        return _FileRound(file, r + start_sample * w, r, w, self._stats)

    def stats(self) -> Mapping[str, Any]:
        """Chunks (``batches``) and ``samples`` read from the file, every round."""
        return dict(self._stats)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def online_sources(
    sources: Sequence[Source], ids: int | Sequence[int] | None
) -> list[OnlineCapable]:
    """The online teachers ``ids`` names (a teacher id, a list of them, or None: every online
    teacher), for ``send`` / ``recv``.

    Raises:
        ConfigError: an id that is not registered, or names an offline teacher.
    """
    if ids is None:
        return [s for s in sources if isinstance(s, OnlineCapable)]
    out: list[OnlineCapable] = []
    for teacher_id in [ids] if isinstance(ids, int) else list(ids):
        i = check_int("teacher_id", teacher_id, minimum=0)
        if i >= len(sources):
            raise ConfigError(f"no teacher with id {i}: registered ids are 0..{len(sources) - 1}")
        source = sources[i]
        if not isinstance(source, OnlineCapable):
            raise ConfigError(f"{source.name} is offline: send()/recv() need an online teacher")
        out.append(source)
    return out


def only_online(sources: Sequence[Source]) -> None:
    """Check that every teacher is online (query mode).

    Raises:
        ConfigError: naming the knowledge files.
    """
    offline = [s.name for s in sources if not isinstance(s, OnlineCapable)]
    if offline:
        raise ConfigError(
            f"query mode needs online teachers; {', '.join(offline)} are knowledge files. "
            "Use same-order mode (no queries=) with offline teachers"
        )
