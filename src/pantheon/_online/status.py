"""Asking a running teacher about itself: the client side of ``pantheon status``.

A *monitor* connects like a student (the same token handshake) but says ``role: "monitor"``
in its hello: the teacher does not count it as a student, and answers its STATUS message
with STATUS_INFO ``{"status": {...}}`` (what :meth:`TeacherMachine.status
<pantheon._online.teacher_machine.TeacherMachine.status>` returns, plus the teacher's
counters and description).
"""

from __future__ import annotations

import uuid
from typing import Any

from .._errors import ConnectionLostError, PantheonTimeoutError, ProtocolError
from .._util import Deadline
from .._wire import Connection, MsgType, client_handshake, connect, resolve_token

__all__ = ["fetch_status"]


def fetch_status(
    address: str, *, token: str | bytes | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """The status of the teacher at ``address`` (``"host:port"``).

    Args:
        address: where the teacher listens.
        token: the shared secret (default ``PANTHEON_TOKEN``).
        timeout: seconds for the whole exchange (default 10).

    Raises:
        ConnectionLostError: nothing listens there (within ``timeout``).
        AuthenticationError: a wrong token. ProtocolError: not a Pantheon teacher of this
            version, or a malformed answer. PantheonTimeoutError: no answer in time.
    """
    secret = resolve_token(token)
    deadline = Deadline(timeout)
    hello = {"client": uuid.uuid4().hex, "role": "monitor"}

    def handshake(conn: Connection, d: Deadline) -> None:
        client_handshake(conn, secret, timeout=max(0.1, d.left()), hello=hello)

    conn = connect(address, timeout=timeout, setup=handshake)
    try:
        conn.send(MsgType.STATUS, {}, timeout=deadline.left())
        while True:
            left = deadline.left()
            if left <= 0:
                raise PantheonTimeoutError(
                    f"the teacher at {address} did not answer within {timeout:g} s"
                )
            msg = conn.recv(timeout=left)
            if msg.type == MsgType.STATUS_INFO:
                status = msg.header.get("status")
                if not isinstance(status, dict):
                    raise ProtocolError(f"the teacher at {address} sent a malformed status")
                return status
            if msg.type == MsgType.ERROR:
                raise ProtocolError(
                    f"the teacher at {address} refused: {msg.header.get('message')}"
                )
            if msg.type == MsgType.BYE:
                raise ConnectionLostError(f"the teacher at {address} closed the connection")
    finally:
        try:
            conn.send(MsgType.BYE, {}, timeout=1.0)
        except (ConnectionLostError, PantheonTimeoutError):
            pass
        conn.close()
