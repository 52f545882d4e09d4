"""Mutual token authentication: HMAC-SHA256 challenge-response over both sides' nonces.

The handshake (``docs/protocol.md`` gives every field)::

    client -> server   HELLO      {version, nonce: Nc (32 random bytes)}
    server -> client   CHALLENGE  {version, nonce: Ns (32 random bytes)}
    client -> server   AUTH       {proof: HMAC(token, mac_input("client", Nc, Ns)), hello}
    server -> client   AUTH_OK    {proof: HMAC(token, mac_input("server", Nc, Ns)), hello}
                    or AUTH_FAIL  {reason: "token" | "version", version}

The token never crosses the wire; a recorded proof is useless later because the other side's
nonce is fresh every time. Without a token on either side the key is empty, which works
between two peers that both have none (loopback use). The token authenticates the peers, it
does not encrypt the stream: across untrusted networks, tunnel the connection (SSH, VPN).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import struct
from collections.abc import Mapping
from typing import Any

from .._errors import (
    AuthenticationError,
    ConfigError,
    PantheonError,
    PantheonTimeoutError,
    ProtocolError,
)
from .._util import Deadline
from .core import PROTOCOL_VERSION, Connection, Message, MsgType

__all__ = [
    "HANDSHAKE_MAX_BYTES",
    "NONCE_BYTES",
    "TOKEN_ENV",
    "check_bind",
    "client_handshake",
    "mac_input",
    "resolve_token",
    "server_handshake",
]

log = logging.getLogger(__name__)

TOKEN_ENV = "PANTHEON_TOKEN"  # noqa: S105 - a variable name, not a secret
"""Environment variable read when no ``token=`` is given."""
NONCE_BYTES = 32
"""Length of each side's random nonce."""
HANDSHAKE_MAX_BYTES = 64 * 1024
"""Caps on handshake messages (header and whole message), before the peer is authenticated."""
_CONTEXT = b"pantheon-auth"
_HOW_TO_FIX = (
    "pass the same token= to the teacher and the student, or set the environment variable "
    f"{TOKEN_ENV} to the same value on both sides"
)


def resolve_token(token: str | bytes | None) -> bytes | None:
    """The token to use: ``token`` (str encoded as UTF-8), else ``$PANTHEON_TOKEN``, else None.

    An empty token counts as no token.

    Raises:
        ConfigError: ``token`` is neither str, bytes nor None.
    """
    if token is None:
        env = os.environ.get(TOKEN_ENV, "")
        return env.encode("utf-8") if env else None
    if isinstance(token, str):
        return token.encode("utf-8") or None
    if isinstance(token, (bytes, bytearray, memoryview)):
        return bytes(token) or None
    raise ConfigError(f"token must be a str, bytes or None, got {type(token).__name__}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: bytes | None) -> None:
    """Refuse to listen beyond this machine without a token.

    Raises:
        ConfigError: ``host`` is not a loopback address (``127.x.x.x``, ``::1``,
            ``localhost``) and ``token`` is empty.
    """
    if not token and not _is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host!r} without a token: any machine that can reach it could "
            f"connect. Pass token=... or set the environment variable {TOKEN_ENV} (the same "
            "value on the student), or listen on 127.0.0.1"
        )


def mac_input(
    role: str, client_nonce: bytes, server_nonce: bytes, version: int = PROTOCOL_VERSION
) -> bytes:
    """The bytes a side's proof is the HMAC-SHA256 of.

    ``b"pantheon-auth" 0x00 role 0x00 version(u16 LE) client_nonce server_nonce`` where role is
    ``b"client"`` or ``b"server"``.
    """
    return b"".join(
        (
            _CONTEXT,
            b"\x00",
            role.encode("ascii"),
            b"\x00",
            struct.pack("<H", version),
            client_nonce,
            server_nonce,
        )
    )


def _proof(token: bytes | None, role: str, nc: bytes, ns: bytes) -> bytes:
    return hmac.new(token or b"", mac_input(role, nc, ns), hashlib.sha256).digest()


class _Caps:
    """Small caps on a connection while its peer is not authenticated yet."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.saved = (conn.max_header_bytes, conn.max_frames, conn.max_message_bytes)

    def __enter__(self) -> None:
        c = self.conn
        c.max_header_bytes = min(c.max_header_bytes, HANDSHAKE_MAX_BYTES)
        c.max_frames = 0
        c.max_message_bytes = min(c.max_message_bytes, HANDSHAKE_MAX_BYTES)

    def __exit__(self, *exc: object) -> None:
        self.conn.max_header_bytes, self.conn.max_frames, self.conn.max_message_bytes = self.saved


def _expect(conn: Connection, deadline: Deadline, step: str, *types: MsgType) -> Message:
    remaining = deadline.left()
    if remaining <= 0:
        raise PantheonTimeoutError(f"handshake with {conn.peer} timed out before {step}")
    try:
        msg = conn.recv(timeout=remaining)
    except PantheonTimeoutError:
        raise PantheonTimeoutError(
            f"handshake with {conn.peer} timed out waiting for {step}; is the peer a Pantheon "
            "teacher/student of the same version?"
        ) from None
    if msg.type not in types:
        names = " or ".join(t.name for t in types)
        raise ProtocolError(
            f"handshake with {conn.peer}: expected {names}, got message type {msg.type!r}"
        )
    return msg


def _field(msg: Message, key: str, kind: type, peer: str, size: int | None = None) -> Any:
    value = msg.header.get(key)
    if not isinstance(value, kind) or (size is not None and len(value) != size):  # type: ignore[arg-type]
        want = kind.__name__ + ("" if size is None else f" of {size} bytes")
        raise ProtocolError(
            f"handshake with {peer}: {MsgType(msg.type).name} field {key!r} should be {want}, "
            f"got {value!r:.80}"
        )
    return value


def _version_error(peer: str, theirs: object) -> ProtocolError:
    return ProtocolError(
        f"protocol version mismatch with {peer}: it speaks version {theirs}, this side speaks "
        f"version {PROTOCOL_VERSION}; install the same pantheon version on both sides"
    )


def server_handshake(
    conn: Connection, token: bytes | None, *, timeout: float, hello: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Authenticate a client that just connected; return its hello map.

    Args:
        conn: the accepted connection.
        token: the shared token (None or empty: no token).
        timeout: seconds for the whole handshake.
        hello: this side's hello map (msgpack-native values), sent once the client is
            authenticated.

    Returns:
        The client's hello map, with ``"version"`` set to its protocol version.

    Raises:
        AuthenticationError: the client's proof is wrong (AUTH_FAIL sent; the caller logs it).
        ProtocolError: another protocol version, or malformed handshake messages.
        PantheonTimeoutError: the handshake took longer than ``timeout``.
        On any failure the connection is closed.
    """
    deadline = Deadline(timeout)
    try:
        with _Caps(conn):
            msg = _expect(conn, deadline, "HELLO", MsgType.HELLO)
            version = msg.header.get("version")
            if version != PROTOCOL_VERSION:
                conn.send(MsgType.AUTH_FAIL, {"reason": "version", "version": PROTOCOL_VERSION})
                raise _version_error(conn.peer, version)
            nc = _field(msg, "nonce", bytes, conn.peer, NONCE_BYTES)
            ns = secrets.token_bytes(NONCE_BYTES)
            conn.send(MsgType.CHALLENGE, {"version": PROTOCOL_VERSION, "nonce": ns})
            msg = _expect(conn, deadline, "AUTH", MsgType.AUTH)
            proof = _field(msg, "proof", bytes, conn.peer)
            if not hmac.compare_digest(proof, _proof(token, "client", nc, ns)):
                conn.send(MsgType.AUTH_FAIL, {"reason": "token", "version": PROTOCOL_VERSION})
                raise AuthenticationError(
                    f"the client at {conn.peer} did not prove it holds this side's token; "
                    f"{_HOW_TO_FIX}"
                )
            peer_hello = dict(_field(msg, "hello", dict, conn.peer))
            conn.send(
                MsgType.AUTH_OK,
                {"proof": _proof(token, "server", nc, ns), "hello": dict(hello or {})},
            )
    except BaseException:
        conn.close()
        raise
    peer_hello["version"] = version
    return peer_hello


def client_handshake(
    conn: Connection,
    token: bytes | None,
    *,
    timeout: float,
    hello: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Authenticate to a server and make sure it holds the same token; return its hello map.

    Args:
        conn: the connection just opened.
        token: the shared token (None or empty: no token).
        timeout: seconds for the whole handshake.
        hello: this side's hello map (msgpack-native values: role, client id, ...).

    Returns:
        The server's hello map, with ``"version"`` set to its protocol version.

    Raises:
        AuthenticationError: the server refused this side's token, or could not prove it
            holds the same one.
        ProtocolError: another protocol version, or malformed handshake messages.
        PantheonTimeoutError: the handshake took longer than ``timeout``.
        On any failure the connection is closed.
    """
    deadline = Deadline(timeout)
    try:
        with _Caps(conn):
            nc = secrets.token_bytes(NONCE_BYTES)
            conn.send(MsgType.HELLO, {"version": PROTOCOL_VERSION, "nonce": nc})
            msg = _expect(conn, deadline, "CHALLENGE", MsgType.CHALLENGE, MsgType.AUTH_FAIL)
            if msg.type == MsgType.AUTH_FAIL:
                raise _failure(conn.peer, msg)
            version = msg.header.get("version")
            if version != PROTOCOL_VERSION:
                raise _version_error(conn.peer, version)
            ns = _field(msg, "nonce", bytes, conn.peer, NONCE_BYTES)
            conn.send(
                MsgType.AUTH, {"proof": _proof(token, "client", nc, ns), "hello": dict(hello or {})}
            )
            msg = _expect(conn, deadline, "AUTH_OK", MsgType.AUTH_OK, MsgType.AUTH_FAIL)
            if msg.type == MsgType.AUTH_FAIL:
                raise _failure(conn.peer, msg)
            proof = _field(msg, "proof", bytes, conn.peer)
            if not hmac.compare_digest(proof, _proof(token, "server", nc, ns)):
                raise AuthenticationError(
                    f"the server at {conn.peer} accepted this side but could not prove it holds "
                    f"the same token (is it an impostor?); {_HOW_TO_FIX}"
                )
            peer_hello = dict(_field(msg, "hello", dict, conn.peer))
    except BaseException:
        conn.close()
        raise
    peer_hello["version"] = version
    return peer_hello


def _failure(peer: str, msg: Message) -> PantheonError:
    if msg.header.get("reason") == "version":
        return _version_error(peer, msg.header.get("version"))
    return AuthenticationError(f"the server at {peer} rejected this side's token; {_HOW_TO_FIX}")
