"""Hypothesis-driven message fuzzing against a live teacher and a live student over real
sockets on 127.0.0.1 (findings 1, 2, 3 and 8 in general form).

Teacher side: random session messages (any type, headers of known and unknown fields with
values of any msgpack type, random frames) from hostile authenticated clients; afterwards no
handler has logged a traceback and a real student reads the whole round. Student side: a fake
teacher answers a real student's SUBSCRIBE with random messages; the student either reads a
round that matches the description or raises a PantheonError, never another exception.
``PANTHEON_FUZZ_SCALE`` multiplies the examples (``make fuzz``)."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pantheon import PantheonError, Student
from pantheon._wire import MsgType
from tests.faults.common import (
    FakeTeacher,
    LiveTeacher,
    hostile_student,
    send_desc,
    send_end,
    wait_subscribe,
)
from tests.faults.test_hostile_peer import read_round
from tests.fuzz.common import SCALE

FIELDS = ["sub", "round", "start", "credits", "n", "qid", "reason", "upto", "samples", "chunk"]
FIELDS += ["message", "code", "value", "desc", "codecs", "times", "status"]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=16),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_small = st.integers(min_value=0, max_value=12)
_header = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)),
    st.one_of(_values, _small),
    max_size=6,
)
_chunk = st.fixed_dictionaries(
    {
        "samples": _small,
        "fields": st.lists(
            st.tuples(
                st.sampled_from(["x", "y"]),
                st.sampled_from(["", "values"]),
                st.sampled_from(["int64", "float64", "uint8", "bogus"]),
                st.lists(st.integers(-1, 3), max_size=2),
                st.sampled_from([0, 1, 2]),
            ).map(list),
            max_size=2,
        ),
    }
)
_frames = st.lists(st.binary(max_size=64), max_size=4)


def _acks_a_served_round(kind: int, head: dict[str, Any]) -> bool:
    """A well-formed ROUND_DONE of round 0 acknowledges it: an authenticated peer may do so,
    and the teacher's serve() then returns as documented, so the fuzz leaves it out."""
    rnd = head.get("round")
    return kind == MsgType.ROUND_DONE and type(rnd) is int and rnd == 0


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(record.getMessage())


_TYPES = st.one_of(
    st.sampled_from(
        [
            MsgType.SUBSCRIBE,
            MsgType.CREDIT,
            MsgType.ROUND_DONE,
            MsgType.QUERY,
            MsgType.STATUS,
            MsgType.USER,
            MsgType.DATA,
            MsgType.DESC,
            MsgType.ANSWER,
            MsgType.END_ROUND,
            MsgType.ERROR,
        ]
    ),
    st.integers(0, 255),
)
_MESSAGE = st.tuples(_TYPES, _header, st.one_of(st.none(), _chunk), _frames)


def test_random_messages_from_hostile_clients_never_stop_the_teacher() -> None:
    """Findings 1 and 2 in general: whatever an authenticated client sends, the teacher
    validates it at the edge; it never logs a traceback and serves a real student after."""
    live = LiveTeacher()
    log = logging.getLogger("pantheon")
    handler = _Tracebacks()
    log.addHandler(handler)
    try:

        @settings(
            max_examples=60 * SCALE,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(messages=st.lists(_MESSAGE, min_size=1, max_size=3))
        def one_client(messages: list[Any]) -> None:
            conn = hostile_student(live.address, group="fuzz")
            try:
                for kind, head, chunk, frames in messages:
                    if chunk is not None:
                        head = {**head, "chunk": chunk}
                    if _acks_a_served_round(kind, head):
                        continue
                    if kind == MsgType.USER and "value" in head:
                        head["value"] = msgpack.packb(head["value"])
                    conn.send(kind, head, frames)
            except PantheonError:
                pass  # the teacher closed this connection: it refused a message
            finally:
                conn.close()

        one_client()
        assert handler.bad == [], handler.bad[:5]
        assert np.array_equal(read_round(live.address), np.arange(100))
        live.join()
    finally:
        log.removeHandler(handler)
        live.close()


def test_random_messages_from_a_teacher_are_checked_by_the_student() -> None:
    """Findings 1, 3 and 8 in general: a teacher answering SUBSCRIBE with random messages
    (then an END_ROUND) gives the student either a round that matches the description, ids
    in order, or a PantheonError; never another exception, never a hang."""

    @settings(
        max_examples=25 * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(messages=st.lists(_MESSAGE, min_size=1, max_size=3), end=_small)
    def one_round(messages: list[Any], end: int) -> None:
        def script(conn: Any) -> None:
            send_desc(conn)
            sub = wait_subscribe(conn)
            for kind, head, chunk, frames in messages:
                if chunk is not None:
                    head = {**head, "chunk": chunk}
                if kind in (MsgType.DATA, MsgType.END_ROUND) and head.get("sub") == 0:
                    head["sub"] = sub.sub  # aim some at the live subscription
                if kind == MsgType.USER and "value" in head:
                    head["value"] = msgpack.packb(head["value"])
                conn.send(kind, head, frames)
            send_end(conn, sub, end)
            while True:
                conn.recv(timeout=10)  # until the student closes

        fake = FakeTeacher(script)
        try:
            with Student(timeout=5, transport="tcp") as student:
                student.register_teacher(in_address=fake.address)
                student.start()
                got: list[np.ndarray] = []
                try:
                    for batch in student.get_knowledge_generator(batch_size=4)():
                        assert list(batch) == ["x"]
                        assert batch["x"].dtype == np.int64 and batch["x"].shape[1:] == (1,)
                        got.append(batch["x"].ravel())
                except PantheonError:
                    return
                assert fake.connections == 1
                assert np.concatenate(got).tolist() == list(range(end)) if got else end == 0
        finally:
            fake.close()

    one_round()
