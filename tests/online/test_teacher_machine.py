"""The teacher's protocol state machine, driven in memory: no sockets, no threads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pantheon._knowledge import Chunk
from pantheon._online.fanout import (
    Close,
    ProtocolViolation,
    Send,
    SendData,
    StartCursor,
    StopCursor,
)
from pantheon._online.messages import (
    Bye,
    Credit,
    Desc,
    Hello,
    Query,
    RoundDone,
    StatusRequest,
    Subscribe,
)
from pantheon._online.teacher_machine import TeacherMachine
from pantheon._wire import MsgType


def hello(group: str = "default", rank: int = 0, world: int = 1, client: str = "") -> Hello:
    return Hello(client or f"{group}-{rank}", "student", group, rank, world)


def chunk(first: int, n: int, width: int = 1) -> Chunk:
    ids = np.arange(first, first + n, dtype=np.int64)
    return Chunk(ids, {"x": np.repeat(ids[:, None], width, axis=1)})


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def sent_ids(actions: list[Any], cid: int) -> list[int]:
    out: list[int] = []
    for a in of(actions, SendData):
        if any(t[0] == cid for t in a.targets):
            for c in a.chunks:
                out += c.ids.tolist()
    return out


def controls(actions: list[Any], cid: int, kind: MsgType) -> list[dict[str, Any]]:
    return [a.header for a in of(actions, Send) if a.cid == cid and a.type == kind]


class Driver:
    """Runs a machine the way the server does, recording what each consumer received."""

    def __init__(self, machine: TeacherMachine) -> None:
        self.m = machine
        self.log: list[Any] = []
        self.started: dict[int, StartCursor] = {}
        self.stopped: set[int] = set()
        self.closed: set[int] = set()

    def run(self, actions: list[Any]) -> list[Any]:
        self.log += actions
        for a in actions:
            if isinstance(a, StartCursor):
                self.started[a.id] = a
            elif isinstance(a, StopCursor):
                self.stopped.add(a.id)
            elif isinstance(a, Close):
                self.closed.add(a.cid)
        return actions

    def connect(self, cid: int, h: Hello) -> list[Any]:
        return self.run(self.m.connect(cid, h, f"peer{cid}"))

    def send(self, cid: int, event: Any, now: float = 0.0) -> list[Any]:
        return self.run(self.m.receive(cid, event, now))

    def produce(self, cursor: int, *chunks: Chunk) -> list[Any]:
        return self.run(self.m.add_chunks(cursor, list(chunks)))

    def end(self, cursor: int) -> list[Any]:
        return self.run(self.m.end_cursor(cursor))

    def ids(self, cid: int) -> list[int]:
        return sent_ids(self.log, cid)

    def ends(self, cid: int) -> list[dict[str, Any]]:
        return controls(self.log, cid, MsgType.END_ROUND)

    def errors(self, cid: int) -> list[dict[str, Any]]:
        return controls(self.log, cid, MsgType.ERROR)


def test_one_student_one_round() -> None:
    d = Driver(TeacherMachine(times=1))
    d.connect(1, hello())
    acts = d.send(1, Subscribe(sub=5, round=0, start=0, credits=8))
    assert of(acts, StartCursor) == [StartCursor(0, 0, 0)]
    d.produce(0, chunk(0, 4), chunk(4, 4))
    d.end(0)
    assert d.ids(1) == list(range(8))
    assert d.ends(1) == [{"sub": 5, "round": 0, "samples": 8}]
    assert not d.m.finished()
    d.send(1, RoundDone(0))
    assert d.m.finished()
    assert d.m.predicted_chunks == 2


def test_credits_bound_the_messages_in_flight_and_coalesce_what_waited() -> None:
    d = Driver(TeacherMachine(times=1, coalesce_bytes=1 << 20))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, credits=1))
    d.produce(0, chunk(0, 2))
    d.produce(0, chunk(2, 2), chunk(4, 2))
    assert len(of(d.log, SendData)) == 1  # one credit: one message
    d.send(1, Credit(1, 1))
    data = of(d.log, SendData)
    assert len(data) == 2 and len(data[1].chunks) == 2  # what waited goes out together
    assert d.ids(1) == list(range(6))
    d.send(1, Credit(99, 5))  # credits of another subscription are ignored
    d.produce(0, chunk(6, 2))
    assert d.ids(1) == list(range(6))


def test_credits_returned_send_everything_they_allow() -> None:
    d = Driver(TeacherMachine(times=1, coalesce_bytes=1))  # a chunk per message
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, credits=1))
    for i in range(4):
        d.produce(0, chunk(2 * i, 2))
    assert d.ids(1) == [0, 1]
    d.send(1, Credit(1, 4))  # four credits: the three chunks held go out at once
    assert d.ids(1) == list(range(8))
    assert len(of(d.log, SendData)) == 4


def test_a_byte_window_bounds_the_bytes_in_flight_and_cuts_messages_to_fit() -> None:
    """With a byte window, a message goes while the bytes sent and not yet credited are
    below it (one chunk always, when nothing is in flight), cut to what still fits; credits
    free the oldest messages' bytes, however many messages the credits allow."""
    d = Driver(TeacherMachine(times=1, coalesce_bytes=1 << 20))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, credits=16, window=100))  # chunk(_, 4): 32 bytes each
    d.produce(0, *(chunk(4 * i, 4) for i in range(8)))
    data = of(d.log, SendData)
    assert [len(m.chunks) for m in data] == [4]  # 4 x 32 = 128: the 4th passes the window
    d.send(1, Credit(1, 1))  # that message's 128 bytes are free: the next goes
    data = of(d.log, SendData)
    assert [len(m.chunks) for m in data] == [4, 4]
    assert d.ids(1) == list(range(32))
    d.send(1, Credit(1, 8))  # more credits than messages in flight: nothing below zero
    d.produce(0, chunk(32, 4))
    assert d.ids(1) == list(range(36))
    consumer = d.m._consumers[1]
    assert consumer.in_flight_bytes == 32 and list(consumer.in_flight) == [32]


def test_a_chunk_larger_than_the_byte_window_goes_alone() -> None:
    d = Driver(TeacherMachine(times=1, coalesce_bytes=1 << 20))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, credits=16, window=10))
    d.produce(0, chunk(0, 4), chunk(4, 4))
    assert [len(m.chunks) for m in of(d.log, SendData)] == [1]  # never stuck, never more
    d.send(1, Credit(1, 1))
    assert d.ids(1) == list(range(8))


def test_a_new_subscription_starts_with_nothing_in_flight() -> None:
    d = Driver(TeacherMachine(times=1, coalesce_bytes=1 << 20))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, credits=16, window=10))
    d.produce(0, chunk(0, 4), chunk(4, 4))
    assert d.ids(1) == [0, 1, 2, 3]
    d.send(1, Subscribe(2, 0, 4, credits=16, window=10))  # resumed at 4: old bytes forgotten
    assert d.ids(1) == list(range(8))


def test_the_window_bounds_what_a_cursor_holds() -> None:
    d = Driver(TeacherMachine(times=1, window=3))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, credits=1))
    for i in range(3):
        d.produce(0, chunk(2 * i, 2))
    # one chunk sent, two held: room for one more
    assert d.m.has_room(0)
    d.produce(0, chunk(6, 2))
    assert not d.m.has_room(0)
    d.send(1, Credit(1, 10))
    assert d.m.has_room(0)
    assert not d.m.has_room(42)


def test_ranks_of_a_group_share_one_cursor_and_get_their_shards() -> None:
    d = Driver(TeacherMachine(times=1))
    for r in range(3):
        d.connect(r, hello(rank=r, world=3))
    d.send(1, Subscribe(1, 0, 1, 8))  # each rank asks from its shard's first sample
    d.send(2, Subscribe(1, 0, 2, 8))
    assert not d.started  # the gate waits for every rank of the group
    d.send(0, Subscribe(1, 0, 0, 8))
    assert list(d.started) == [0]
    d.produce(0, chunk(0, 4), chunk(4, 4), chunk(8, 2))
    d.end(0)
    for r in range(3):
        assert d.ids(r) == list(range(r, 10, 3))
        assert d.ends(r) == [{"sub": 1, "round": 0, "samples": 10}]
    assert d.m.predicted_chunks == 3


def test_a_chunk_without_samples_for_a_rank_costs_no_message_and_no_credit() -> None:
    d = Driver(TeacherMachine(times=1))
    d.connect(0, hello(rank=0, world=4))
    for r in range(1, 4):
        d.connect(r, hello(rank=r, world=4))
    for r in range(4):
        d.send(r, Subscribe(1, 0, r, credits=1))
    d.produce(0, chunk(0, 1))  # only rank 0's sample
    d.produce(0, chunk(1, 1))  # only rank 1's
    assert d.ids(0) == [0] and d.ids(1) == [1] and d.ids(3) == []
    d.produce(0, chunk(3, 1))
    assert d.ids(3) == [3]  # its credit was not spent on the chunks without its samples


def test_fan_out_groups_wait_for_each_other_and_share_predictions() -> None:
    d = Driver(TeacherMachine(times=2, groups=3))
    for g in range(3):
        d.connect(g, hello(group=f"job{g}"))
    d.send(0, Subscribe(1, 0, 0, 8))
    d.send(1, Subscribe(1, 0, 0, 8))
    assert not d.started
    d.send(2, Subscribe(1, 0, 0, 8))
    d.produce(0, chunk(0, 5))
    d.end(0)  # round 1 starts computing ahead
    assert [s.round for s in d.started.values()] == [0, 1]
    for g in range(3):
        assert d.ids(g) == [0, 1, 2, 3, 4]
        d.send(g, RoundDone(0))
    d.produce(1, chunk(0, 5))
    for g in range(3):
        d.send(g, Subscribe(2, 1, 0, 8))
    d.end(1)
    assert d.m.predicted_chunks == 2  # one prediction per reader batch, for three groups
    for g in range(3):
        assert d.ids(g) == [0, 1, 2, 3, 4] * 2
        d.send(g, RoundDone(1))
    assert d.m.finished()


def test_a_late_joiner_shares_what_the_cursor_still_holds() -> None:
    d = Driver(TeacherMachine(times=1, groups=1, coalesce_bytes=1))
    d.connect(1, hello(group="a"))
    d.send(1, Subscribe(1, 0, 0, credits=1))
    d.produce(0, chunk(0, 4), chunk(4, 4))  # chunk 0 sent, chunk 1 held
    d.connect(2, hello(group="b"))
    d.send(2, Subscribe(1, 0, 0, 8))  # sample 0 was sent to everyone and dropped
    assert len(d.started) == 2  # so a cursor of its own
    d.connect(3, hello(group="c"))
    d.send(3, Subscribe(1, 0, 5, 8))  # from sample 5: the first cursor still holds it
    assert len(d.started) == 2
    assert d.ids(3) == [5, 6, 7]


def test_a_restarted_rank_resumes_on_a_cursor_of_its_own() -> None:
    d = Driver(TeacherMachine(times=1, coalesce_bytes=1))
    d.connect(1, hello(rank=0, world=2, client="old"))
    d.connect(2, hello(rank=1, world=2))
    d.send(1, Subscribe(1, 0, 0, 8))
    d.send(2, Subscribe(1, 0, 1, 8))
    d.produce(0, chunk(0, 4))
    d.run(d.m.disconnect(1))  # rank 0 was killed after receiving 0, 2
    d.produce(0, chunk(4, 4))  # rank 1 alone on the cursor: sent to it and dropped
    d.connect(3, hello(rank=0, world=2, client="new"))
    d.send(3, Subscribe(2, 0, 4, 8))  # resumes at its next sample, which the cursor passed
    assert [s.start for s in d.started.values()] == [0, 4]  # so a cursor of its own
    d.produce(1, chunk(4, 4))
    d.end(0)
    d.end(1)
    assert d.ids(3) == [4, 6]
    assert d.ids(2) == [1, 3, 5, 7]
    assert d.ends(3) == [{"sub": 2, "round": 0, "samples": 8}]


def test_replacement_refuses_the_replaced_client() -> None:
    d = Driver(TeacherMachine(times=1))
    d.connect(1, hello(client="first"))
    d.send(1, Subscribe(1, 0, 0, 8))
    d.connect(2, hello(client="second"))
    assert d.errors(1)[0]["code"] == "replaced"
    assert 1 in d.closed
    d.connect(3, hello(client="first"))  # the replaced one comes back: refused
    assert d.errors(3)[0]["code"] == "replaced" and 3 in d.closed


def test_limits_and_bad_requests() -> None:
    d = Driver(TeacherMachine(times=2, max_students=2))
    d.connect(1, hello(rank=0, world=2))
    d.connect(2, hello(group="b"))
    d.connect(3, hello(group="c"))
    assert d.errors(3)[0]["code"] == "full" and 3 in d.closed
    d.connect(4, hello(rank=1, world=3))
    assert d.errors(4)[0]["code"] == "bad_request"  # another world_size for group default
    d.send(2, Subscribe(1, 2, 0, 8))
    assert "serves 2 round(s) (times=2); round 2 was requested" in d.errors(2)[0]["message"]
    with pytest.raises(ProtocolViolation, match="ROUND_DONE for round 4611686018427387904"):
        d.send(2, RoundDone(2**62))
    d.send(2, Query(0))
    assert d.errors(2)[-1]["code"] == "bad_request"


def test_a_student_that_leaves_early_ends_the_service_with_a_reason() -> None:
    d = Driver(TeacherMachine(times=2))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, 8))
    d.produce(0, chunk(0, 3))
    d.end(0)
    d.send(1, RoundDone(0))
    assert d.m.abandoned() is None
    d.send(1, Bye())
    reason = d.m.abandoned()
    assert reason is not None and "left after round 0" in reason and "times=2" in reason


def test_a_lost_student_is_waited_for_not_abandoned() -> None:
    d = Driver(TeacherMachine(times=2))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, 8))
    d.run(d.m.disconnect(1))  # no goodbye: it may come back
    assert d.m.abandoned() is None and not d.m.finished()


def test_gates_time_out() -> None:
    d = Driver(TeacherMachine(times=2, groups=2, gate_timeout=5))
    d.connect(1, hello(group="a"))
    d.send(1, Subscribe(1, 0, 0, 8), now=0.0)
    assert d.run(d.m.tick(4.0)) == []
    d.run(d.m.tick(5.0))
    assert d.m.failure is not None and "2 complete student groups" in d.m.failure
    assert "'a' rank 0" in d.errors(1)[0]["message"]

    d = Driver(TeacherMachine(times=2, groups=2, gate_timeout=5))
    d.connect(1, hello(group="a"))
    d.connect(2, hello(group="b"))
    d.send(1, Subscribe(1, 0, 0, 8))
    d.send(2, Subscribe(1, 0, 0, 8))
    d.produce(0, chunk(0, 2))
    d.end(0)
    d.send(1, Subscribe(2, 1, 0, 8), now=10.0)  # group b is slow to come back for round 1
    d.run(d.m.tick(16.0))  # round 1 goes on without it
    d.produce(1, chunk(0, 2))
    assert d.ids(1) == [0, 1, 0, 1]


def test_parked_cursors_are_retired() -> None:
    d = Driver(TeacherMachine(times=1, park_timeout=3))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 4, 8))  # a resumed subscription: a cursor of its own
    d.run(d.m.disconnect(1))
    d.run(d.m.tick(0.0))
    assert not d.stopped
    d.run(d.m.tick(3.0))
    assert d.stopped == {0}


def test_prefetch_is_joined_and_the_description_goes_to_everyone() -> None:
    d = Driver(TeacherMachine(times=1))
    d.run(d.m.prefetch(0))
    assert list(d.started) == [0]
    d.produce(0, chunk(0, 3))
    d.connect(1, hello())
    desc = Desc({"x": {"shape": [-1, 1], "dtype": "int64", "lod_level": 0}}, {}, 1)
    d.run(d.m.set_desc(desc))
    assert controls(d.log, 1, MsgType.DESC)[0]["times"] == 1
    d.connect(2, hello(group="b"))
    assert len(controls(d.log, 2, MsgType.DESC)) == 1  # on connecting
    d.send(1, Subscribe(1, 0, 0, 8))
    assert len(d.started) == 1 and d.ids(1) == [0, 1, 2]


def test_failure_reaches_every_student_and_new_subscriptions() -> None:
    d = Driver(TeacherMachine(times=1))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, 8))
    d.run(d.m.fail("the reader raised ValueError: bad"))
    assert "bad" in d.errors(1)[0]["message"] and d.stopped == {0}
    d.send(1, Subscribe(2, 0, 0, 8))
    assert d.errors(1)[-1]["code"] == "failed"


def test_a_student_connecting_after_the_failure_is_told_at_once() -> None:
    """A student that waits for the description before subscribing would otherwise hear
    nothing: the failure came before it, and it asks for nothing the machine could refuse."""
    d = Driver(TeacherMachine(times=1))
    d.run(d.m.prefetch(0))
    d.run(d.m.fail("the teacher's first batch clashes"))
    d.connect(1, hello())
    assert "clashes" in d.errors(1)[0]["message"]


def test_status_and_monitors() -> None:
    d = Driver(TeacherMachine(times=3))
    d.connect(1, hello(rank=1, world=2))
    d.connect(9, Hello("", "monitor", "default", 0, 1))
    d.send(1, Subscribe(1, 0, 0, 8))
    acts = d.send(9, StatusRequest())
    (info,) = [a.header["status"] for a in of(acts, Send) if a.type == MsgType.STATUS_INFO]
    assert info["times"] == 3 and info["students"][0]["rank"] == 1
    assert info["students"][0]["waiting"]  # rank 0 is not there yet
    with pytest.raises(ProtocolViolation):
        d.send(9, Subscribe(1, 0, 0, 8))
    d.send(9, Bye())
    assert 9 in d.closed


def test_query_mode_ends_when_every_student_said_goodbye() -> None:
    d = Driver(TeacherMachine(queries=True))
    d.connect(1, hello(group="a"))
    d.connect(2, hello(group="b"))
    assert d.send(1, Query(0)) == []
    d.send(1, Subscribe(1, 0, 0, 8))
    assert d.errors(1)[0]["code"] == "bad_request"
    d.send(1, Bye())
    assert not d.m.finished()
    d.send(2, Bye())
    assert d.m.finished()


def test_query_mode_waits_for_the_groups_it_was_told_of() -> None:
    d = Driver(TeacherMachine(queries=True, groups=2))
    d.connect(1, hello(group="a"))
    d.send(1, Bye())  # a fast student is done before the second one connected
    assert not d.m.finished()
    d.connect(2, hello(group="b"))
    d.send(2, Bye())
    assert d.m.finished()


def test_a_round_computed_ahead_before_anyone_came_is_served_not_computed_again() -> None:
    m = TeacherMachine(times=1, window=10)
    (start,) = of(m.prefetch(0), StartCursor)
    m.add_chunks(start.id, [chunk(0, 10), chunk(10, 5)])
    m.end_cursor(start.id)  # the whole (short) round is ready before any student
    m.connect(1, hello(), "peer")
    acts = m.receive(1, Subscribe(sub=1, round=0, start=0, credits=8))
    assert of(acts, StartCursor) == []  # the computed round is used, not recomputed
    assert sent_ids(acts, 1) == list(range(15))


def test_status_of_a_student_whose_round_was_all_sent_shows_its_end() -> None:
    """A short round sent whole (its cursor gone) shows the student at the round's end, not
    at sample 0."""
    d = Driver(TeacherMachine(times=1))
    d.connect(1, hello())
    d.send(1, Subscribe(1, 0, 0, 8))
    d.produce(0, chunk(0, 3))
    d.end(0)
    assert d.ends(1)[0]["samples"] == 3
    (student,) = d.m.status()["students"]
    assert (student["position"], student["lag"]) == (3, 0)
