"""The same-host transport: knowledge through a shared-memory ring the student owns.

When a student and its teacher run on one host, knowledge need not cross the kernel's TCP
stack twice. The student creates a :class:`~pantheon._wire.ring.Ring` and offers it in its
hello; the teacher, once the student is authenticated, maps it (checking that it is a sealed
memfd of ours with the declared size, magic and the student's random key) and answers
``SHM_READY``. From then on the teacher copies each DATA (and ANSWER) message's frames into a
free slot and sends only the header over TCP, naming the slot and where each frame lies in it;
the student hands out arrays that are views of the slot. A slot is the student's again once
nothing references those arrays (the rule of :class:`~pantheon._wire.BufferPool`); the
student says so with ``SHM_FREE``. Headers, credits, heartbeats and resume stay on TCP, so
their semantics do not change; a message that does not fit a slot, or finds no free slot,
goes over TCP as before.

:func:`accept_offer` (teacher) and :func:`read_ready` (student) are the negotiation;
:class:`ShmSender` / :class:`ShmReceiver` wrap a :class:`~pantheon._wire.Connection` so that
the layers above see ordinary messages.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import ConnectionLostError, PantheonTimeoutError, ProtocolError
from .._util import Deadline
from .core import Alloc, Connection, Frame, Message, MsgType
from .ring import Ring, RingMapping, map_offer
from .tcp import same_host

__all__ = ["ShmReceiver", "ShmSender", "accept_offer", "is_local", "read_ready"]

log = logging.getLogger("pantheon")


def is_local(conn: Connection) -> bool:
    """Whether the peer of ``conn`` is on this host (a loopback address, or this side's own)."""
    return same_host(conn.peer, conn.local)


def accept_offer(conn: Connection, offer: Any, timeout: float) -> Connection:
    """Teacher side, right after the handshake: answer a student's ring offer with
    ``SHM_READY`` and return the connection to use (wrapped when the ring was mapped).

    Raises:
        ProtocolError: a malformed offer (the connection should be closed).
    """
    mapping, why = map_offer(offer)
    conn.send(MsgType.SHM_READY, {"ok": mapping is not None, "reason": why}, timeout=timeout)
    if mapping is None:
        log.debug("%s gets its knowledge over TCP: %s", conn.peer, why)
        return conn
    return ShmSender(conn, mapping)


def read_ready(conn: Connection, timeout: float) -> tuple[bool, str]:
    """Student side, right after the handshake with a ring offered: the teacher's answer.

    Raises:
        ProtocolError: another message came, or a malformed answer.
        PantheonTimeoutError: no answer within ``timeout`` seconds.
    """
    msg = conn.recv(timeout=timeout)
    ok, reason = msg.header.get("ok"), msg.header.get("reason", "")
    if msg.type != MsgType.SHM_READY or type(ok) is not bool or not isinstance(reason, str):
        raise ProtocolError(
            f"expected SHM_READY {{ok, reason}} after offering shared memory, got message type "
            f"{msg.type} with header keys {sorted(map(str, msg.header))[:8]}"
        )
    return ok, reason[:1000]


_SHM_TYPES = (MsgType.DATA, MsgType.ANSWER)


class _Wrapper(Connection):
    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.peer = inner.peer
        self.local = inner.local
        self.max_header_bytes = inner.max_header_bytes
        self.max_frames = inner.max_frames
        self.max_message_bytes = inner.max_message_bytes

    @property
    def bytes_sent(self) -> int:  # type: ignore[override]
        return self.inner.bytes_sent

    @property
    def bytes_received(self) -> int:  # type: ignore[override]
        return self.inner.bytes_received

    @property
    def messages_sent(self) -> int:  # type: ignore[override]
        return self.inner.messages_sent

    @property
    def messages_received(self) -> int:  # type: ignore[override]
        return self.inner.messages_received

    @property
    def bytes_read(self) -> int:  # type: ignore[override]
        return self.inner.bytes_read

    @property
    def closed(self) -> bool:
        return self.inner.closed


class ShmSender(_Wrapper):
    """The teacher's connection to a student whose ring it mapped: DATA and ANSWER frames go
    through the ring when they fit a free slot; ``SHM_FREE`` is handled here."""

    def __init__(self, inner: Connection, mapping: RingMapping) -> None:
        super().__init__(inner)
        self.mapping = mapping

    def send(
        self,
        type: int,
        header: Mapping[str, Any] | None = None,
        frames: Sequence[Frame] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        if frames and type in _SHM_TYPES:
            where = self.mapping.place(frames)
            if where is not None:
                return self.inner.send(type, {**(header or {}), "shm": where}, (), timeout=timeout)
        return self.inner.send(type, header, frames, timeout=timeout)

    def recv(self, timeout: float | None = None, *, alloc: Alloc | None = None) -> Message:
        deadline = Deadline(timeout)
        while True:
            msg = self.inner.recv(timeout=deadline.left(), alloc=alloc)
            if msg.type != MsgType.SHM_FREE:
                return msg
            self.mapping.release(msg.header.get("slots"))

    def close(self) -> None:
        self.inner.close()
        self.mapping.close()


class ShmReceiver(_Wrapper):
    """The student's connection to a teacher that mapped its ring: messages placed in the
    ring come out with their frames as views of the slot; freed slots are given back with
    ``SHM_FREE`` whenever this side receives or sends."""

    def __init__(self, inner: Connection, ring: Ring, send_timeout: float = 10.0) -> None:
        super().__init__(inner)
        self.ring = ring
        self.received = 0  # messages that came through the ring
        self._send_timeout = send_timeout
        self._freed: list[int] = []  # collected, not yet given back
        self._freed_lock = threading.Lock()  # the reader, heartbeat and training threads
        self.return_batch = max(1, min(8, ring.slots // 6))

    def _give_back(self) -> None:
        """Tell the teacher of the slots freed since, in groups of :attr:`return_batch` (one
        message per few batches, not per batch) or at once when half the ring is away. Any
        thread may call it; each freed slot is told once."""
        with self._freed_lock:
            self._freed += self.ring.collect()
            n = len(self._freed)
            if not n or (n < self.return_batch and 2 * (self.ring.lent + n) < self.ring.slots):
                return
            freed, self._freed = self._freed, []
        try:
            self.inner.send(MsgType.SHM_FREE, {"slots": freed}, timeout=self._send_timeout)
        except BaseException:
            # not sent (other threads held the connection past the timeout, say): the next
            # call tells them, or the teacher would never lend these slots again
            with self._freed_lock:
                self._freed[:0] = freed
            raise

    def send(
        self,
        type: int,
        header: Mapping[str, Any] | None = None,
        frames: Sequence[Frame] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        self._give_back()
        return self.inner.send(type, header, frames, timeout=timeout)

    def recv(self, timeout: float | None = None, *, alloc: Alloc | None = None) -> Message:
        msg = self.inner.recv(timeout=timeout, alloc=alloc)
        where = msg.header.get("shm")
        if where is not None:
            if msg.frames or msg.type not in _SHM_TYPES:
                raise ProtocolError(
                    f"message type {msg.type} names a shared-memory slot but is not DATA or "
                    "ANSWER, or also carries frames over TCP"
                )
            header = dict(msg.header)
            del header["shm"]
            msg = Message(msg.type, header, self.ring.frames(where, self.max_frames))
            self.received += 1
        with contextlib.suppress(ConnectionLostError, PantheonTimeoutError):
            self._give_back()  # a broken connection shows on the next recv
        return msg

    def close(self) -> None:
        self.inner.close()
        self.ring.close()
