"""One online teacher with nothing to merge: the student's batches are cut in the training
loop's own thread, without a read-ahead thread.

An online teacher's chunks are received, checked and decoded by the connection's own reader
thread, and the teacher's credits keep several messages on their way: they are the
read-ahead already. A second thread between the reader and the training loop would only add
a hand-off per batch (a wake-up and a lock on each side, measured in ``docs/design.md``), so
in this case :class:`PassThroughRound` takes the chunks where the reader left them, re-batches
them to the student's batch size, and hands them on. Everything else (several teachers,
merging, an offline file whose reading is the work, ranks kept equal) keeps the
:class:`~pantheon._student.assembler.RoundAssembler` thread.
"""

from __future__ import annotations

import collections
import threading

from .._knowledge import Chunk
from .assembler import AssemblerStopped
from .rebatch import Rebatcher
from .sources import RoundStream

__all__ = ["PassThroughRound", "passes_through"]


def passes_through(streams: list[RoundStream], merges: bool, equalize: bool) -> bool:
    """Whether a round can be read by :class:`PassThroughRound`: one stream whose chunks a
    thread of its source receives ahead (``received_ahead``), no keys to merge, no ranks to
    keep equal."""
    return (
        len(streams) == 1
        and not merges
        and not equalize
        and bool(getattr(streams[0], "received_ahead", False))
    )


class PassThroughRound:
    """The batches of one round of one teacher, cut in the caller's thread.

    The interface of :class:`~pantheon._student.assembler.Assembler` (``get``, ``stop``,
    ``qsize``), without its thread.

    Args:
        stream: the teacher's round stream.
        batch_size: samples per student batch.
        drop_last: drop a last batch shorter than ``batch_size``.
    """

    def __init__(self, stream: RoundStream, *, batch_size: int, drop_last: bool) -> None:
        self._stream = stream
        self._batch_size = batch_size
        self._drop_last = drop_last
        self._rebatcher = Rebatcher(batch_size)
        self._ready: collections.deque[Chunk] = collections.deque()
        self._ended = False
        self._error: BaseException | None = None
        self._stopped = threading.Event()

    def qsize(self) -> int:
        """Batches cut and not yet taken."""
        return len(self._ready)

    def get(self, timeout: float) -> Chunk | None:
        """The next batch, or ``None`` at the end of the round (then again on later calls);
        an error of the teacher is raised here, and again on later calls.

        Args:
            timeout: seconds to wait for the teacher's next chunk (its stream names the
                teacher when it gives up).
        """
        if self._ready:
            return self._ready.popleft()
        if self._error is not None:
            raise self._error
        if self._ended:
            return None
        try:
            return self._next(timeout)
        except BaseException as exc:
            if self._stopped.is_set():
                raise AssemblerStopped("this knowledge generator's read-ahead was stopped") from exc
            self._error = exc
            raise

    def _next(self, timeout: float) -> Chunk | None:
        rebatcher, size = self._rebatcher, self._batch_size
        while True:
            if self._stopped.is_set():
                raise AssemblerStopped("this knowledge generator's read-ahead was stopped")
            chunk = self._stream.next_chunk(timeout)
            if chunk is None:
                self._ended = True
                tail = rebatcher.flush()
                return None if tail is None or self._drop_last else tail
            if not rebatcher.pending and len(chunk.ids) == size:
                return chunk  # a chunk of exactly one batch, on a batch boundary: as it is
            rebatcher.push(chunk)
            while (batch := rebatcher.pop()) is not None:
                self._ready.append(batch)
            if self._ready:
                return self._ready.popleft()

    def stop(self) -> None:
        """Abandon the round (idempotent); a caller waiting in :meth:`get` in another thread
        is woken and raises :class:`~pantheon._student.assembler.AssemblerStopped`."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._stream.close()
