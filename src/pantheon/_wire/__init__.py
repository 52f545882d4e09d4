"""The wire: framing, transports, values, authentication and sessions.

The seam of the wire layer, in the way ``distributed.comm`` is built: :mod:`.core` defines the
interfaces (:class:`Connection`, :class:`ByteStream`, :class:`MsgType`, :class:`Message`) and
never imports a transport; :mod:`.framing` puts the message framing on any byte stream;
:mod:`.tcp` and :mod:`.inproc` are the transports; this module wires them together. Above
them: no-pickle values (:mod:`.values`), knowledge chunks (:mod:`.chunks`), the token
handshake (:mod:`.auth`), live sessions with heartbeats (:mod:`.session`) and the same-host
transport through a shared-memory ring (:mod:`.ring`, :mod:`.shm`).
``docs/protocol.md`` gives every byte.
"""

from __future__ import annotations

from .auth import (
    HANDSHAKE_MAX_BYTES,
    NONCE_BYTES,
    TOKEN_ENV,
    check_bind,
    client_handshake,
    mac_input,
    resolve_token,
    server_handshake,
)
from .buffers import BufferPool
from .chunks import decode_parts, encode_joined, encode_parts
from .core import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_ALIGN,
    FRAME_FORMAT,
    MAGIC,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    Alloc,
    Buffer,
    ByteStream,
    Connection,
    Frame,
    Message,
    MsgType,
    Pieces,
    SendTimeout,
    frames_nbytes,
)
from .framing import StreamConnection
from .inproc import InprocConnection, PipeStream, inproc_pair, pipe_pair
from .ring import SHM_ENV, Ring, RingMapping, map_offer, shm_unavailable
from .session import (
    USER_INBOX_BYTES,
    USER_INBOX_MESSAGES,
    Heartbeat,
    Session,
    UserInbox,
    take_message,
    user_message,
)
from .shm import ShmReceiver, ShmSender, accept_offer, is_local, read_ready
from .tcp import (
    Listener,
    SocketStream,
    TcpConnection,
    connect,
    connect_socket,
    format_address,
    listen,
    listen_socket,
    parse_address,
)
from .values import decode_value, encode_value

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FRAME_ALIGN",
    "FRAME_FORMAT",
    "HANDSHAKE_MAX_BYTES",
    "MAGIC",
    "NONCE_BYTES",
    "PREFIX_SIZE",
    "PROTOCOL_VERSION",
    "SHM_ENV",
    "TOKEN_ENV",
    "USER_INBOX_BYTES",
    "USER_INBOX_MESSAGES",
    "Alloc",
    "Buffer",
    "BufferPool",
    "ByteStream",
    "Connection",
    "Frame",
    "Heartbeat",
    "InprocConnection",
    "Listener",
    "Message",
    "MsgType",
    "Pieces",
    "PipeStream",
    "Ring",
    "RingMapping",
    "SendTimeout",
    "Session",
    "ShmReceiver",
    "ShmSender",
    "SocketStream",
    "StreamConnection",
    "TcpConnection",
    "UserInbox",
    "accept_offer",
    "check_bind",
    "client_handshake",
    "connect",
    "connect_socket",
    "decode_parts",
    "decode_value",
    "encode_joined",
    "encode_parts",
    "encode_value",
    "format_address",
    "frames_nbytes",
    "inproc_pair",
    "is_local",
    "listen",
    "listen_socket",
    "mac_input",
    "map_offer",
    "parse_address",
    "pipe_pair",
    "read_ready",
    "resolve_token",
    "server_handshake",
    "shm_unavailable",
    "take_message",
    "user_message",
]
