"""User messages (``Teacher.send`` / ``Student.send``) waiting for ``recv()``, bounded."""

from __future__ import annotations

import queue
from typing import Any

from .._errors import ProtocolError
from .._wire import Message, decode_value, take_message

__all__ = ["Inbox"]


class Inbox:
    """A bounded queue of decoded user messages.

    Args:
        sender: who sends them, for errors (``"the student"``, ``"teacher 0 (host:port)"``).
        reader: the call that takes them (``"Teacher.recv()"``).
        limit: unread messages at most (default 1024); one more is a protocol error that
            closes the sender's connection.
    """

    def __init__(self, sender: str, reader: str, limit: int = 1024) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=limit)
        self._sender, self._reader, self._limit = sender, reader, limit

    def put(self, msg: Message) -> None:
        """Decode a USER message (never unpickled) and queue it.

        Raises:
            ProtocolError: ``limit`` messages wait already.
        """
        try:
            self._queue.put_nowait(decode_value(msg.header.get("value"), msg.frames))
        except queue.Full:
            raise ProtocolError(
                f"{self._sender} sent more than {self._limit} messages that {self._reader} did "
                "not take"
            ) from None

    def take(self, timeout: float) -> Any:
        """The next message (waits at most ``timeout`` s)."""
        return take_message(self._queue, timeout, f"{self._sender} ({self._reader})")
