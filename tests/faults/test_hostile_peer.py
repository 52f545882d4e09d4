"""A hostile authenticated peer, on both sides of a live connection over 127.0.0.1.

The student side is crafted with the project's own handshake and framing
(:func:`tests.faults.common.hostile_student`), the teacher side with
:class:`tests.faults.common.FakeTeacher`. Each bad message must close that one connection
with one log line (a :class:`~pantheon.ProtocolError` inside) while the teacher goes on
serving, or reach a real student as a ``ProtocolError`` — never a crash, a silent wrong value
or a misleading wait. Findings 1, 2, 3, 7 and 8 of the hardening issue.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgpack
import numpy as np
import pytest

from pantheon import ProtocolError, Student
from pantheon._wire import MsgType
from pantheon._wire.values import EXT_TUPLE, MAX_DEPTH
from tests.faults.common import (
    X_DESC,
    FakeTeacher,
    LiveTeacher,
    closed_by_peer,
    hostile_student,
    send_data,
    send_desc,
    send_end,
    wait_subscribe,
    xs,
)


def nested_tuples(levels: int) -> bytes:
    """``levels`` tuples (msgpack ext 1), each holding the next: 2-15 KB for 150-1000."""
    data = msgpack.packb(None)
    for _ in range(levels):
        data = msgpack.packb(msgpack.ExtType(EXT_TUPLE, b"\x91" + data))
    return data


def read_round(address: str, **kw: Any) -> np.ndarray:
    """All of round 0 as a real student reads it."""
    with Student(timeout=30, transport="tcp", **kw) as student:
        student.register_teacher(in_address=address)
        student.start()
        gen = student.get_knowledge_generator(batch_size=16)
        return np.concatenate([b["x"].ravel() for b in gen()])


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "closing connection" in r.getMessage()]


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, f"a hostile message reached code that does not validate it: {bad}"


# --------------------------------------------------------------------------- teacher side

_QUERY_HEAD = {"qid": 1, "chunk": {"samples": 1, "fields": [["x", "", "int64", [1], 0]]}}

BAD_MESSAGES: dict[str, tuple[int, dict[str, Any], list[bytes]]] = {
    "subscribe-without-round": (MsgType.SUBSCRIBE, {"sub": 1, "start": 0, "credits": 4}, []),
    "subscribe-without-start": (MsgType.SUBSCRIBE, {"sub": 1, "round": 0, "credits": 4}, []),
    "subscribe-round-zero-str": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": "zero", "start": 0, "credits": 4},
        [],
    ),
    "subscribe-credits-many": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": 0, "start": 0, "credits": "many"},
        [],
    ),
    "subscribe-sub-none": (
        MsgType.SUBSCRIBE,
        {"sub": None, "round": 0, "start": 0, "credits": 4},
        [],
    ),
    "subscribe-negative-start": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": 0, "start": -5, "credits": 4},
        [],
    ),
    "subscribe-credits-zero": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": 0, "start": 0, "credits": 0},
        [],
    ),
    "subscribe-window-negative": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": 0, "start": 0, "credits": 4, "window": -1},
        [],
    ),
    "subscribe-window-str": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": 0, "start": 0, "credits": 4, "window": "64 MiB"},
        [],
    ),
    "subscribe-window-huge": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": 0, "start": 0, "credits": 4, "window": 1 << 41},
        [],
    ),
    "subscribe-bool-round": (
        MsgType.SUBSCRIBE,
        {"sub": 1, "round": True, "start": 0, "credits": 4},
        [],
    ),
    "credit-huge": (MsgType.CREDIT, {"sub": 1, "n": 2**40}, []),
    "credit-float": (MsgType.CREDIT, {"sub": 1, "n": 1.5}, []),
    "round-done-float": (MsgType.ROUND_DONE, {"round": 0.0}, []),
    "round-done-2**63": (MsgType.ROUND_DONE, {"round": 2**63}, []),
    "query-without-qid": (
        MsgType.QUERY,
        {"chunk": _QUERY_HEAD["chunk"]},
        [np.zeros(1, np.int64).tobytes(), np.zeros(1, np.int64).tobytes()],
    ),
    "query-wrong-frame-count": (MsgType.QUERY, _QUERY_HEAD, [np.zeros(1, np.int64).tobytes()]),
    "data-from-a-student": (MsgType.DATA, {"sub": 1, "round": 0, "upto": 1}, []),
    "desc-from-a-student": (MsgType.DESC, {"desc": X_DESC, "codecs": {}, "times": 1}, []),
    "bye-reason-int": (MsgType.BYE, {"reason": 7}, []),
    "unknown-type": (99, {}, []),
    "user-nested-200": (MsgType.USER, {"value": nested_tuples(200)}, []),
    "user-nested-10000": (MsgType.USER, {"value": nested_tuples(10_000)}, []),
}


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_finding_1_2_a_bad_message_closes_only_its_connection_and_the_teacher_serves_on(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Findings 1 and 2: malformed fields (a missing ``round``, ``credits: "many"``, ``sub:
    None``, a QUERY without ``qid`` or with a wrong frame count, ...) and deep nesting made the
    teacher raise raw KeyError/TypeError (or segfault). Now: that connection is closed with one
    log line and a real student then reads the whole round from the same teacher."""
    caplog.set_level(logging.INFO, logger="pantheon")
    live = LiveTeacher()
    try:
        conn = hostile_student(live.address)
        kind, head, frames = BAD_MESSAGES[name]
        conn.send(kind, head, frames)
        closed_by_peer(conn)
        lines = refusals(caplog)
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert_no_tracebacks(caplog)
        assert np.array_equal(read_round(live.address), np.arange(100))
        live.join()
    finally:
        live.close()


def test_finding_2_round_done_of_a_round_never_served_does_not_end_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 2: ``ROUND_DONE{round: 2**62}`` made ``serve()`` return at once after 0 samples.
    Now a round the teacher does not serve cannot be acknowledged: the connection is closed
    and ``serve()`` returns only after a real student consumed the round."""
    caplog.set_level(logging.INFO, logger="pantheon")
    live = LiveTeacher()
    try:
        for rnd in (2**62, 2**40, 1):
            conn = hostile_student(live.address, group="default")
            conn.send(MsgType.ROUND_DONE, {"round": rnd})
            closed_by_peer(conn)
        assert live.runner.thread.is_alive(), "serve() returned after a forged ROUND_DONE"
        assert live.teacher.stats()["samples"] <= 10  # only the description's batch ahead
        assert np.array_equal(read_round(live.address), np.arange(100))
        live.join()
    finally:
        live.close()


def test_finding_2_many_hostile_connections_in_a_row_leave_the_teacher_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 2, all bad messages one after the other on one teacher: each connection is
    refused on its own and the teacher serves the round whole."""
    caplog.set_level(logging.INFO, logger="pantheon")
    live = LiveTeacher()
    try:
        for kind, head, frames in BAD_MESSAGES.values():
            conn = hostile_student(live.address)
            conn.send(kind, head, frames)
            closed_by_peer(conn)
        assert_no_tracebacks(caplog)
        assert np.array_equal(read_round(live.address), np.arange(100))
        live.join()
    finally:
        live.close()


# --------------------------------------------------------------------------- student side


def _student_error(script: Any, *, timeout: float = 20, **kw: Any) -> BaseException:
    """What a real student raises reading round 0 from a fake teacher running ``script``."""
    fake = FakeTeacher(script)
    started = time.monotonic()
    try:
        with Student(timeout=timeout, transport="tcp", **kw) as student:
            student.register_teacher(in_address=fake.address)
            student.start()
            with pytest.raises(ProtocolError) as info:
                gen = student.get_knowledge_generator(batch_size=4)
                for _ in gen():
                    pass
        took = time.monotonic() - started
        assert took < timeout / 2, f"the error took {took:.1f} s: the student waited its timeout"
        assert fake.connections == 1, f"the student reconnected {fake.connections - 1} times"
        return info.value
    finally:
        fake.close()


def _serve(parts_of: Any, *, desc: Any = X_DESC, end: int | None = None) -> Any:
    """A fake teacher script: DESC, then DATA of ``parts_of(sub)`` (a list of (ids, parts)),
    then END_ROUND of ``end`` samples when given; then waits for the student to close."""

    def script(conn: Any) -> None:
        send_desc(conn, desc)
        sub = wait_subscribe(conn)
        for ids, parts in parts_of(sub):
            send_data(conn, sub, ids, parts)
        if end is not None:
            send_end(conn, sub, end)
        closed_by_peer(conn, timeout=30)

    return script


@pytest.mark.parametrize(
    "parts",
    [
        {("x", ""): np.arange(4, dtype=np.float64).reshape(-1, 1)},
        {("x", ""): np.arange(8, dtype=np.int64).reshape(-1, 2)},
        {("x", ""): np.arange(4, dtype=np.int64).reshape(-1, 1), ("y", ""): np.zeros((4, 1))},
        {("y", ""): np.zeros((4, 1), np.int64)},
        {("x", ""): np.arange(4, dtype=np.int64).reshape(-1, 1), ("x", "values"): np.zeros(4)},
    ],
    ids=["dtype", "shape", "extra-key", "missing-key", "extra-part"],
)
def test_finding_3_knowledge_unlike_its_description_is_a_protocol_error(parts: Any) -> None:
    """Finding 3: the student handed the training loop whatever DATA held (wrong dtype or
    shape, extra or missing keys). Now every chunk is checked against the description."""
    exc = _student_error(_serve(lambda sub: [(np.arange(4), parts)], end=4))
    assert "x" in str(exc) or "y" in str(exc), exc


def test_finding_3_a_bad_chunk_among_good_ones_is_refused_and_the_good_ones_keep_their_dtype() -> (
    None
):
    """Finding 3: chunks grouped into one message made a float chunk turn every batch float64.
    The student checks each DATA message: the good batches before it arrive as int64."""
    got: list[np.ndarray] = []

    def chunks(sub: Any) -> list[Any]:
        bad = {("x", ""): np.arange(8, 12, dtype=np.float64).reshape(-1, 1)}
        return [(np.arange(0, 4), xs(0, 4)), (np.arange(4, 8), xs(4, 8)), (np.arange(8, 12), bad)]

    fake = FakeTeacher(_serve(chunks, end=12))
    try:
        with Student(timeout=20, transport="tcp") as student:
            student.register_teacher(in_address=fake.address)
            student.start()
            with pytest.raises(ProtocolError, match="float64"):
                for batch in student.get_knowledge_generator(batch_size=4)():
                    got.append(batch["x"])
    finally:
        fake.close()
    assert all(b.dtype == np.int64 for b in got)
    assert np.array_equal(
        np.concatenate(got).ravel() if got else np.arange(0), np.arange(len(got) * 4)
    )


@pytest.mark.parametrize(
    "ids",
    [[0, 1, 1, 3], [0, 2, 1, 3], [0, 1, 3, 4], [1, 2, 3, 4]],
    ids=["duplicated", "shuffled", "missing", "shifted"],
)
def test_finding_8_every_id_of_a_chunk_is_checked(ids: list[int]) -> None:
    """Finding 8: only a chunk's first id was checked. Now a duplicated, shuffled or missing
    id anywhere in a chunk is a ProtocolError naming the ids."""
    exc = _student_error(_serve(lambda sub: [(ids, xs(0, 4))], end=4))
    assert "sample ids" in str(exc), exc


def test_finding_8_a_round_cut_in_half_is_a_protocol_error() -> None:
    """Finding 8: END_ROUND's sample count was not checked. A round whose END_ROUND claims 8
    samples after 4 arrived is a ProtocolError, not a short round."""
    exc = _student_error(_serve(lambda sub: [(range(4), xs(0, 4))], end=8))
    assert "cut short" in str(exc), exc


def test_finding_8_more_samples_than_the_end_says_is_a_protocol_error() -> None:
    """Finding 8, the other way: 8 samples sent, then END_ROUND of 4."""
    exc = _student_error(_serve(lambda sub: [(range(8), xs(0, 8))], end=4))
    assert "only 4 samples" in str(exc), exc


def test_finding_1_a_teacher_sending_deep_nesting_is_a_protocol_error_on_the_student() -> None:
    """Finding 1, student side: a teacher's USER message of 1000 nested tuples used to
    segfault the student's reader thread; now ``recv`` raises ProtocolError."""

    def script(conn: Any) -> None:
        send_desc(conn)
        conn.send(MsgType.USER, {"value": nested_tuples(1000)})
        closed_by_peer(conn, timeout=30)

    fake = FakeTeacher(script)
    try:
        with Student(timeout=20, transport="tcp") as student:
            student.register_teacher(in_address=fake.address)
            student.start()
            with pytest.raises(ProtocolError, match=f"more than {MAX_DEPTH} levels"):
                student.recv(0, timeout=10)
    finally:
        fake.close()


def test_finding_7_a_teacher_breaking_the_protocol_is_not_reconnected_to() -> None:
    """Finding 7: protocol violations became a reconnect loop (~860 reconnects per second)
    ending in a misleading timeout. Now the student raises ProtocolError at once, on the first
    connection (``_student_error`` checks the count and the time)."""

    def script(conn: Any) -> None:
        send_desc(conn)
        sub = wait_subscribe(conn)
        conn.send(MsgType.DATA, {"sub": sub.sub, "round": 0, "upto": "all"}, [])
        closed_by_peer(conn, timeout=30)

    exc = _student_error(script)
    assert "upto" in str(exc), exc


def test_finding_7_a_broken_handshake_is_not_retried() -> None:
    """Finding 7: handshake errors were retried without backoff. A server answering HELLO
    with garbage gives a ProtocolError on one connection."""
    fake_conns: list[int] = []

    def script(conn: Any) -> None:  # never reached: the handshake itself fails
        fake_conns.append(1)

    from pantheon._wire import listen

    listener = listen("127.0.0.1", 0)
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn = listener.accept(timeout=5)
            except Exception:
                return
            accepted.append(conn)
            try:
                conn.recv(timeout=5)
                conn.send(MsgType.CHALLENGE, {"version": 2, "nonce": b"short"})
            except Exception:
                pass

    from tests.helpers import Runner

    runner = Runner(serve)
    started = time.monotonic()
    try:
        with Student(timeout=20, transport="tcp") as student:
            student.register_teacher(in_address=listener.address)
            with pytest.raises(ProtocolError):
                student.start()
        assert time.monotonic() - started < 10
        assert len(accepted) == 1, f"the student reconnected {len(accepted) - 1} times"
    finally:
        listener.close()
        runner.thread.join(10)
        for conn in accepted:
            conn.close()


def test_finding_4_wrapping_ragged_lengths_from_a_live_teacher_are_refused() -> None:
    """Finding 4 over a live connection: lengths [3, 2**63-1, 2**63-2, 3] "summed" to 3 in
    int64 and the student got [[10,11,12],[],[],[10,11,12]]; now a ProtocolError."""
    from tests.fuzz.test_fuzz_chunks import WRAPPING, ragged_chunk

    desc = {"tok": {"shape": [-1, -1], "dtype": "int64", "lod_level": 1}}

    def script(conn: Any) -> None:
        send_desc(conn, desc)
        sub = wait_subscribe(conn)
        head, frames = ragged_chunk(WRAPPING, [10, 11, 12])
        conn.send(MsgType.DATA, {**head, "sub": sub.sub, "round": 0, "upto": 4}, frames)
        send_end(conn, sub, 4)
        closed_by_peer(conn, timeout=30)

    exc = _student_error(script)
    assert "tok" in str(exc), exc


def test_finding_7_a_teacher_that_hangs_up_is_retried_with_backoff() -> None:
    """Finding 7: reconnections ran without backoff (~860 per second). A listener that
    accepts and hangs up at once (a fault reconnecting can mend) is retried with delays
    doubling from 0.05 s to 0.5 s: within a 3 s timeout that is at most about a dozen
    attempts, and the error names the teacher and says what happened."""
    from pantheon import TeacherError
    from pantheon._wire import listen
    from tests.helpers import Runner

    listener = listen("127.0.0.1", 0)
    accepted = [0]

    def hang_up() -> None:
        while True:
            try:
                conn = listener.accept(timeout=10)
            except Exception:
                return
            accepted[0] += 1
            conn.close()

    runner = Runner(hang_up)
    try:
        with Student(timeout=3, transport="tcp") as student:
            student.register_teacher(in_address=listener.address)
            with pytest.raises(TeacherError, match="could not connect") as info:
                student.start()
        assert listener.address in str(info.value)
        assert 2 <= accepted[0] <= 20, f"{accepted[0]} connection attempts in 3 s"
    finally:
        listener.close()
        runner.thread.join(15)


def test_finding_2_a_client_saying_goodbye_without_reading_does_not_end_the_service() -> None:
    """Finding 2 (found by the live fuzz): a client that connected and said BYE at once,
    before any student read, ended ``serve()`` with "every student said goodbye". Only a
    group that asked for a round counts; the teacher serves the real student after."""
    live = LiveTeacher()
    try:
        conn = hostile_student(live.address, group="probe")
        conn.send(MsgType.BYE, {})
        closed_by_peer(conn)
        assert np.array_equal(read_round(live.address), np.arange(100))
        live.join()
    finally:
        live.close()
