"""Re-batching: a stream of chunks of any sizes in, chunks of exactly ``batch_size`` out.

Teachers batch however suits them; the student wants its own batch size. The re-batcher keeps
the pending chunks as they came and cuts them with views: a stored chunk that already has the
student's batch size (or a multiple of it) is handed through without a copy, and only batches
that straddle two chunks are concatenated (one copy).
"""

from __future__ import annotations

from collections import deque

from .._chunks import concat_chunks, slice_chunk
from .._knowledge import Chunk
from .._util import check_int

__all__ = ["Rebatcher"]


class Rebatcher:
    """Cut a stream of chunks into chunks of exactly ``batch_size`` samples.

    Args:
        batch_size: samples per output chunk (> 0).

    ``push`` chunks in stream order, ``pop`` full batches while there are any, and ``flush``
    the remainder (shorter than ``batch_size``) at the end of the stream.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = check_int("batch_size", batch_size, unit="samples")
        self._pending: deque[Chunk] = deque()
        self._offset = 0  # samples of _pending[0] already handed out
        self._count = 0  # samples pending in total

    @property
    def pending(self) -> int:
        """Number of samples pushed and not yet handed out."""
        return self._count

    def push(self, chunk: Chunk) -> None:
        """Append a chunk (of any size, empty ones are ignored)."""
        n = len(chunk.ids)
        if n:
            self._pending.append(chunk)
            self._count += n

    def pop(self) -> Chunk | None:
        """The next chunk of exactly ``batch_size`` samples, or ``None`` if not enough are pending."""
        if self._count < self.batch_size:
            return None
        return self._take(self.batch_size)

    def flush(self) -> Chunk | None:
        """All pending samples as one chunk (shorter than ``batch_size``), or ``None`` if none."""
        if self._count == 0:
            return None
        return self._take(self._count)

    def _take(self, size: int) -> Chunk:
        first = self._pending[0]
        available = len(first.ids) - self._offset
        if available >= size:  # a view of one chunk: no copy
            out = slice_chunk(first, self._offset, self._offset + size)
            self._advance(size, available)
            return out
        parts: list[Chunk] = []
        need = size
        while need:
            first = self._pending[0]
            available = len(first.ids) - self._offset
            take = min(available, need)
            parts.append(slice_chunk(first, self._offset, self._offset + take))
            self._advance(take, available)
            need -= take
        return concat_chunks(parts)

    def _advance(self, taken: int, available: int) -> None:
        self._count -= taken
        if taken == available:
            self._pending.popleft()
            self._offset = 0
        else:
            self._offset += taken
