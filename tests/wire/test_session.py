"""Sessions and user messages, in memory: a real session over an in-memory connection."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pantheon._errors import ConfigError, ProtocolError
from pantheon._wire import (
    DEFAULT_MAX_HEADER_BYTES,
    Heartbeat,
    Message,
    MsgType,
    Session,
    UserInbox,
    decode_value,
    inproc_pair,
    user_message,
)

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
