"""Receive buffers recycled once nothing references them: an ``alloc`` for ``Connection.recv``."""

from __future__ import annotations

import sys

import numpy as np

from .._errors import ConfigError

__all__ = ["BufferPool"]


class BufferPool:
    """Receive buffers recycled once nothing references them: an ``alloc`` for ``recv``.

    ``conn.recv(alloc=pool)`` takes a buffer from the pool: one whose previous message (its
    frames and every array decoded from them) is no longer referenced anywhere, or a new one
    (at least ``min_bytes``, aligned to 64 bytes). Reusing buffers avoids the page faults
    of fresh large allocations. The pool remembers at most ``max_buffers`` buffers; when all
    are in use it forgets the oldest (which is freed normally when its message is).

    Whether a buffer is free is read from its reference count, so the pool only recycles on
    CPython with the GIL; elsewhere it allocates a new buffer every time.

    Args:
        max_buffers: buffers remembered (default 8).
        min_bytes: smallest buffer allocated, bytes (default 64 KiB).
    """

    def __init__(self, max_buffers: int = 8, min_bytes: int = 64 * 1024) -> None:
        if max_buffers < 1 or min_bytes < 0:
            raise ConfigError(
                f"BufferPool needs max_buffers >= 1 and min_bytes >= 0, got {max_buffers}, "
                f"{min_bytes}"
            )
        self.max_buffers = max_buffers
        self.min_bytes = min_bytes
        self._bufs: list[np.ndarray] = []
        self._idle_refs: tuple[int, int] | None = None  # (buffer, allocation) refs when idle
        self._enabled = (
            sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()
        )
        self.allocated = 0  # buffers created (counter, for tests and statistics)

    def _refs(self, i: int) -> tuple[int, int]:
        # numpy collapses view chains: a slice of a frame refers to the allocation (``base``),
        # a memoryview or np.frombuffer refers to the buffer itself; both must be unreferenced.
        buf = self._bufs[i]
        return sys.getrefcount(buf), sys.getrefcount(buf.base)

    def __call__(self, nbytes: int) -> np.ndarray:
        """A writable, 64-byte aligned uint8 buffer of at least ``nbytes`` bytes."""
        bufs = self._bufs
        if self._enabled:
            for i in range(len(bufs)):
                if bufs[i].nbytes >= nbytes and self._refs(i) == self._idle_refs:
                    bufs.append(bufs.pop(i))  # most recently used last
                    return bufs[-1]
        size = max(nbytes, self.min_bytes)
        raw = np.empty(size + 63, dtype=np.uint8)
        skip = -raw.ctypes.data % 64
        buf = raw[skip : skip + size]
        self.allocated += 1
        if self._enabled:
            if len(bufs) >= self.max_buffers:
                bufs.pop(0)
            bufs.append(buf)
            del buf, raw
            if self._idle_refs is None:
                self._idle_refs = self._refs(len(bufs) - 1)
            return bufs[-1]
        return buf
