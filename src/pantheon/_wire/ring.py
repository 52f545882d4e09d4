"""The shared-memory ring of the same-host transport: its layout, the student's :class:`Ring`
(which owns the memory) and the teacher's :class:`RingMapping` of it.

Layout (little-endian; ``docs/protocol.md``, "Same-host transport")::

    offset 0     header page (4096 bytes): magic "PTHNRING" | u32 version (1) | u32 slots |
                 u64 slot_bytes | 32-byte key | zeros
    offset 4096  slot 0, then slot 1, ... each ``slot_bytes`` bytes (a multiple of the page size)

The memory is a ``memfd`` sealed against shrinking and growing, so that a teacher's mapping
can never lose its pages under it (no ``SIGBUS``); it has no name in ``/dev/shm`` and the
kernel frees it once no process holds it, whichever side dies first.
"""

from __future__ import annotations

import contextlib
import hmac
import mmap
import os
import secrets
import stat
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import ConfigError, ConnectionLostError, ProtocolError
from .core import FRAME_ALIGN, Frame, Pieces, byte_view

__all__ = [
    "DEFAULT_SLOTS",
    "DEFAULT_SLOT_BYTES",
    "HEADER_BYTES",
    "RING_MAGIC",
    "SHM_ENV",
    "Ring",
    "RingMapping",
    "boot_id",
    "map_offer",
    "shm_unavailable",
]

SHM_ENV = "PANTHEON_SHM"
"""Environment variable: ``0`` turns the same-host transport off on that side."""
RING_MAGIC = b"PTHNRING"
RING_VERSION = 1
HEADER_BYTES = 4096
"""The ring's first page: its header; slots follow, each a multiple of the page size."""
_HEADER = struct.Struct("<8sIIQ32s")  # magic, version, slots, slot_bytes, key
KEY_BYTES = 32
DEFAULT_SLOTS = 32
"""Slots of a student's ring by default: the messages a teacher may have in flight (the
student's credits, 16 by default) plus the student's read-ahead (8 batches) fit in it."""
DEFAULT_SLOT_BYTES = 8 * 1024 * 1024
"""Bytes of one slot by default (8 MiB): the largest message that goes through shared memory.
Memory is committed only where messages were written (the ring is 256 MiB of address space)."""
MAX_SLOTS = 1024
MAX_RING_BYTES = 16 * 1024**3
MEMFD_NAME = "pantheon-ring"
_SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")


def shm_unavailable() -> str | None:
    """Why this process cannot use the same-host transport (None: it can)."""
    if os.environ.get(SHM_ENV, "1").strip() == "0":
        return f"turned off ({SHM_ENV}=0)"
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
        return "shared memory rings need Linux (memfd_create)"
    import fcntl

    if not all(hasattr(fcntl, s) for s in (*_SEALS, "F_ADD_SEALS", "F_GET_SEALS")):
        return "this Python has no memfd seals (fcntl.F_ADD_SEALS)"
    return None


def boot_id() -> str:
    """This host's boot id (the same for every process of one running kernel), or ``""``."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read(64).strip()
    except OSError:
        return ""


def _check_geometry(slots: Any, slot_bytes: Any, where: str, error: type[Exception]) -> None:
    ok = (
        isinstance(slots, int)
        and isinstance(slot_bytes, int)
        and 1 <= slots <= MAX_SLOTS
        and slot_bytes >= 64 * 1024
        and slot_bytes % mmap.PAGESIZE == 0
        and HEADER_BYTES + slots * slot_bytes <= MAX_RING_BYTES
    )
    if not ok:
        raise error(
            f"{where}: a ring needs 1..{MAX_SLOTS} slots of at least 64 KiB, a multiple of "
            f"{mmap.PAGESIZE} bytes, {MAX_RING_BYTES >> 30} GiB in all at most; got {slots!r} "
            f"slots of {slot_bytes!r} bytes"
        )


def _slot_views(mm: mmap.mmap, slots: int, slot_bytes: int) -> list[np.ndarray]:
    """One uint8 array per slot, viewing the mapping (the base of every frame of the slot)."""
    return [
        np.frombuffer(mm, np.uint8, slot_bytes, HEADER_BYTES + i * slot_bytes) for i in range(slots)
    ]


class Ring:
    """A student's ring: a sealed memfd of ``slots`` slots of ``slot_bytes`` bytes.

    The frames of a message placed in slot ``i`` are handed out as views of the slot;
    :meth:`collect` returns the lent slots that nothing references any more (their arrays
    were dropped by the training loop), which the student then gives back with ``SHM_FREE``.
    Closing the ring closes its descriptor; the memory itself goes when the last array
    viewing it does (and with the process, whatever happens).

    Args:
        slots / slot_bytes: the ring's geometry (defaults :data:`DEFAULT_SLOTS`,
            :data:`DEFAULT_SLOT_BYTES`).

    Raises:
        ConfigError: a geometry out of bounds.
        OSError: the kernel refused the memory (``memfd_create``, ``ftruncate``, ``mmap``).
    """

    def __init__(self, slots: int = DEFAULT_SLOTS, slot_bytes: int = DEFAULT_SLOT_BYTES) -> None:
        import fcntl

        _check_geometry(slots, slot_bytes, "Ring", ConfigError)
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.size = HEADER_BYTES + slots * slot_bytes
        self.key = secrets.token_bytes(KEY_BYTES)
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        self.fd: int | None = os.memfd_create(MEMFD_NAME, flags)
        try:
            os.ftruncate(self.fd, self.size)
            seals = 0
            for s in _SEALS:
                seals |= getattr(fcntl, s)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
            self._mm: mmap.mmap | None = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self._mm[: _HEADER.size] = _HEADER.pack(
            RING_MAGIC, RING_VERSION, slots, slot_bytes, self.key
        )
        self._slots = _slot_views(self._mm, slots, slot_bytes)
        self._idle = [sys.getrefcount(self._slots[i]) for i in range(slots)]
        self._lent: set[int] = set()
        self._lock = threading.Lock()
        self._refcounts = sys.implementation.name == "cpython"

    def offer(self) -> dict[str, Any]:
        """What the hello carries so that a teacher on this host can map the ring."""
        if self.fd is None:
            raise ConfigError("this ring is closed")
        return {
            "v": RING_VERSION,
            "pid": os.getpid(),
            "fd": self.fd,
            "boot": boot_id(),
            "key": self.key,
            "slots": self.slots,
            "slot_bytes": self.slot_bytes,
        }

    @property
    def lent(self) -> int:
        """Slots holding a message the student has not given back yet."""
        return len(self._lent)

    def frames(self, where: Any, max_frames: int) -> list[memoryview]:
        """The frames of a message placed in a slot (``where``: the header's ``shm`` field,
        ``[slot, offset0, length0, offset1, length1, ...]``), as writable views of the slot.

        Raises:
            ProtocolError: a malformed field, a slot out of range or still lent, or a frame
                outside its slot or not aligned to :data:`~pantheon._wire.FRAME_ALIGN`.
            ConnectionLostError: the ring is closed (its connection closed meanwhile).
        """
        if (
            not isinstance(where, list)
            or len(where) % 2 != 1
            or len(where) > 1 + 2 * max_frames
            or not all(type(x) is int for x in where)
        ):
            raise ProtocolError(
                "a shared-memory message's 'shm' field must be [slot, offset, length, ...] "
                f"(integers, at most {max_frames} frames), got {str(where)[:120]}"
            )
        slot = where[0]
        with self._lock:
            if self._mm is None:
                raise ConnectionLostError("this student's ring is closed (its connection ended)")
            if not 0 <= slot < self.slots or slot in self._lent:
                state = "lent" if slot in self._lent else "out of range"
                raise ProtocolError(
                    f"the teacher placed a message in slot {slot} of this student's ring, which "
                    f"is {state} (the ring has {self.slots} slots)"
                )
            self._lent.add(slot)
        base = self._slots[slot]
        out = []
        for k in range(1, len(where), 2):
            off, n = where[k], where[k + 1]
            if off < 0 or n < 0 or off % FRAME_ALIGN or off + n > self.slot_bytes:
                with self._lock:
                    self._lent.discard(slot)
                raise ProtocolError(
                    f"a shared-memory frame at offset {off} of {n} bytes lies outside slot "
                    f"{slot} ({self.slot_bytes} bytes) or is not {FRAME_ALIGN}-byte aligned"
                )
            out.append(base[off : off + n].data)
        return out

    def collect(self) -> list[int]:
        """The lent slots nothing references any more, now free again (to report).

        Without reference counts (not CPython) a slot is given back once its message was
        decoded would be unsafe, so such slots stay lent: the teacher then falls back to TCP.
        """
        if not self._lent or not self._refcounts:
            return []
        with self._lock:
            if self._mm is None:
                return []  # closed (by another thread): nothing is given back any more
            freed = [s for s in self._lent if sys.getrefcount(self._slots[s]) == self._idle[s]]
            self._lent.difference_update(freed)
        return freed

    def close(self) -> None:
        """Close the descriptor and drop this side's views (idempotent). Arrays still held
        stay valid: the mapping lives as long as they do."""
        with self._lock:
            fd, self.fd = self.fd, None
            mm, self._mm = self._mm, None
            self._slots = []
        if fd is not None:
            os.close(fd)
        if mm is not None:
            with contextlib.suppress(BufferError):  # views alive: unmapped when they go
                mm.close()


class RingMapping:
    """A teacher's mapping of one student's ring: places frames in free slots.

    Created by :func:`accept_offer`. All slots start free; :meth:`place` takes one,
    :meth:`release` (on the student's ``SHM_FREE``) gives them back.
    """

    def __init__(self, mm: mmap.mmap, slots: int, slot_bytes: int) -> None:
        self._mm: mmap.mmap | None = mm
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._views = _slot_views(mm, slots, slot_bytes)
        self._free = list(range(slots - 1, -1, -1))  # a stack: reuse the warmest slot first
        self._lock = threading.Lock()
        self.placed = 0  # messages placed in the ring (counters, for stats and tests)
        self.fell_back = 0  # messages with frames that went over TCP (no free slot, too big)

    @property
    def free(self) -> int:
        """Slots free for the next messages."""
        return len(self._free)

    def place(self, frames: Sequence[Frame]) -> list[int] | None:
        """Copy ``frames`` into a free slot; return the header's ``shm`` field, or None when
        they do not fit a slot or no slot is free (the message then goes over TCP)."""
        pieces: list[list[memoryview]] = []
        for f in frames:
            views = []
            for part in f.parts if isinstance(f, Pieces) else (f,):
                try:
                    views.append(byte_view(part, len(pieces)))
                except ConfigError:
                    return None  # not C-contiguous: TCP's send says what is wrong with it
            pieces.append(views)
        where: list[int] = []
        total = 0
        for views in pieces:
            size = sum(v.nbytes for v in views)
            where += [total, size]
            total += -(-size // FRAME_ALIGN) * FRAME_ALIGN
        with self._lock:
            if total > self.slot_bytes or not self._free or self._mm is None:
                self.fell_back += 1
                return None
            slot = self._free.pop()
            dst = self._views[slot]
        for k, views in enumerate(pieces):
            off = where[2 * k]
            for v in views:
                dst[off : off + v.nbytes] = np.frombuffer(v, dtype=np.uint8)
                off += v.nbytes
        self.placed += 1
        return [slot, *where]

    def release(self, slots: Any) -> None:
        """Give back the slots of a ``SHM_FREE``.

        Raises:
            ProtocolError: not a list of slot numbers, or a slot that was not lent.
        """
        if not isinstance(slots, list) or len(slots) > self.slots:
            raise ProtocolError(
                f"SHM_FREE must carry a list of at most {self.slots} slot numbers, got "
                f"{str(slots)[:120]}"
            )
        with self._lock:
            lent = set(range(self.slots)) - set(self._free)
            for s in slots:
                if type(s) is not int or s not in lent:
                    raise ProtocolError(
                        f"SHM_FREE gave back slot {s!r}, which is not lent (lent: "
                        f"{sorted(lent)[:16]})"
                    )
                lent.discard(s)
                self._free.append(s)

    def close(self) -> None:
        """Unmap (idempotent)."""
        with self._lock:
            mm, self._mm = self._mm, None
            self._views = []
            self._free = []
        if mm is not None:
            with contextlib.suppress(BufferError):
                mm.close()


def _refuse(why: str) -> tuple[None, str]:
    return None, why


def _parse_offer(offer: Any) -> tuple[int, int, bytes, int, int]:
    if not isinstance(offer, Mapping):
        raise ProtocolError(f"the hello's 'shm' offer must be a map, got {type(offer).__name__}")
    fields = {
        "v": int,
        "pid": int,
        "fd": int,
        "boot": str,
        "key": bytes,
        "slots": int,
        "slot_bytes": int,
    }
    for name, kind in fields.items():
        if type(offer.get(name)) is not kind:
            raise ProtocolError(
                f"the hello's 'shm' offer needs {name!r} as {kind.__name__}, got "
                f"{type(offer.get(name)).__name__}"
            )
    if offer["v"] != RING_VERSION:
        raise ProtocolError(f"ring layout version {offer['v']} (this side knows {RING_VERSION})")
    if (
        len(offer["key"]) != KEY_BYTES
        or not 0 < offer["pid"] < 1 << 31
        or not 0 <= offer["fd"] < 1 << 20
    ):
        raise ProtocolError("the hello's 'shm' offer has a malformed key, pid or fd")
    _check_geometry(offer["slots"], offer["slot_bytes"], "the hello's 'shm' offer", ProtocolError)
    return offer["pid"], offer["fd"], offer["key"], offer["slots"], offer["slot_bytes"]


def map_offer(offer: Any) -> tuple[RingMapping | None, str]:
    """Map the ring a student offered (teacher side, after authentication).

    Returns:
        ``(mapping, "")``, or ``(None, why)`` when it cannot be used here (another host,
        another user, shared memory off): the student then gets its knowledge over TCP.

    Raises:
        ProtocolError: a malformed offer.
    """
    import fcntl

    pid, fd, key, slots, slot_bytes = _parse_offer(offer)
    if (why := shm_unavailable()) is not None:
        return _refuse(f"the teacher cannot use shared memory: {why}")
    if offer["boot"] != boot_id() or not offer["boot"]:
        return _refuse("the student runs on another host (or another kernel)")
    path = f"/proc/{pid}/fd/{fd}"
    try:
        target = os.readlink(path)
        if not target.startswith(f"/memfd:{MEMFD_NAME}"):
            return _refuse(f"{path} is not a ring of a student ({target[:80]!r})")
        nfd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return _refuse(f"the teacher cannot open the student's ring ({exc.strerror})")
    try:
        st = os.fstat(nfd)
        size = HEADER_BYTES + slots * slot_bytes
        seals = fcntl.fcntl(nfd, fcntl.F_GET_SEALS)
        need = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        if not stat.S_ISREG(st.st_mode) or st.st_size != size or seals & need != need:
            return _refuse("the student's ring is not a sealed memfd of the size it declared")
        mm = mmap.mmap(nfd, size)
    except OSError as exc:
        return _refuse(f"the teacher cannot map the student's ring ({exc.strerror})")
    finally:
        os.close(nfd)
    magic, version, got_slots, got_bytes, got_key = _HEADER.unpack_from(mm, 0)
    if (magic, version, got_slots, got_bytes) != (RING_MAGIC, RING_VERSION, slots, slot_bytes) or (
        not hmac.compare_digest(got_key, key)
    ):
        mm.close()
        return _refuse("the student's ring does not hold the header and key it declared")
    return RingMapping(mm, slots, slot_bytes), ""
