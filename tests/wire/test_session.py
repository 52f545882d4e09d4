"""Sessions and user messages, in memory: a real session over an in-memory connection."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from pantheon._errors import ConfigError, ProtocolError
from pantheon._wire import (
    DEFAULT_MAX_HEADER_BYTES,
    MAGIC,
    Heartbeat,
    Message,
    MsgType,
    Session,
    UserInbox,
    decode_value,
    inproc_pair,
    listen,
    parse_address,
    user_message,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(30)


def test_a_message_over_the_caps_is_refused_and_the_session_stays_open() -> None:
    """Over the header cap nothing is sent: the session is fine, and closing it (as for a
    lost connection) made a student reconnect and send it again, hundreds of times a
    second."""
    mine, theirs = inproc_pair()
    closed = threading.Event()
    session = Session(
        mine,
        name="the peer",
        on_message=lambda s, m: None,
        on_close=lambda s, r: closed.set(),
        heartbeat=Heartbeat(interval=1.0, timeout=5.0),
    )
    session.start()
    try:
        with pytest.raises(ConfigError, match="exceeds max_header_bytes"):
            session.send(MsgType.USER, {"value": b"x" * DEFAULT_MAX_HEADER_BYTES})
        assert session.alive and not closed.is_set()
        session.send(MsgType.USER, {"value": b"fits"})
        got = theirs.recv(timeout=5)
        while got.type == MsgType.PING:
            got = theirs.recv(timeout=5)
        assert got.header == {"value": b"fits"}
    finally:
        session.close()
        theirs.close()


def test_a_user_message_too_big_outside_its_arrays_is_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigError, match=r"np\.frombuffer"):
        user_message({"blob": b"x" * DEFAULT_MAX_HEADER_BYTES})
    blob = np.frombuffer(b"x" * (2 * DEFAULT_MAX_HEADER_BYTES), np.uint8)
    head, frames = user_message({"blob": blob})  # the array travels as a frame
    assert len(head["value"]) < 1024
    assert np.array_equal(decode_value(head["value"], frames)["blob"], blob)


def test_a_user_message_whose_value_is_not_bytes_is_a_protocol_error() -> None:
    inbox = UserInbox("the teacher (Student.recv)")
    with pytest.raises(ProtocolError, match="'value' must be msgpack bytes, got int"):
        inbox.put(Message(MsgType.USER, {"value": 5}, []))
    with pytest.raises(ProtocolError, match="got NoneType"):
        inbox.put(Message(MsgType.USER, {}, []))


def test_a_message_that_keeps_coming_slowly_is_not_taken_for_a_dead_peer() -> None:
    """Liveness counted whole messages: one that kept arriving (a slice every few ms) but
    took longer than the heartbeat timeout in all closed the session as "sent nothing",
    and the same message came again after the reconnection, forever."""
    body = b"\\0" * (2 << 20)
    head = struct.pack("<4sBBHII", MAGIC, 1, 0, int(MsgType.DATA), 0, 1)
    msg = head + struct.pack("<Q", len(body)) + body
    with listen() as listener:
        host, port = parse_address(listener.address)
        sock = socket.create_connection((host, port), timeout=10)
        conn = listener.accept(timeout=10)
    got: list[Message] = []
    closed = threading.Event()
    session = Session(
        conn,
        name="the teacher",
        on_message=lambda s, m: got.append(m),
        on_close=lambda s, r: closed.set(),
        heartbeat=Heartbeat(interval=0.2, timeout=0.5),
    )
    session.start()
    try:
        for i in range(0, len(msg), 64 * 1024):  # ~1.6 s in all, a slice every 50 ms
            sock.sendall(msg[i : i + 64 * 1024])
            time.sleep(0.05)
        assert wait_for(lambda: got or closed.is_set())
        assert [m.type for m in got] == [MsgType.DATA]
        assert len(got[0].frames[0]) == len(body)
        assert closed.wait(10), "silent afterwards: the peer is taken for dead"
    finally:
        session.close()
        sock.close()
