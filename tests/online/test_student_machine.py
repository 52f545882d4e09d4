"""The student's protocol state machine, driven in memory: no sockets, no threads."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from pantheon._errors import (
    ConfigError,
    ConnectionLostError,
    ProtocolError,
    TeacherError,
)
from pantheon._knowledge import Chunk
from pantheon._online.messages import (
    Credit,
    Desc,
    EndRound,
    ErrorCode,
    Event,
    Fail,
    Query,
    RoundDone,
    Subscribe,
)
from pantheon._online.student_machine import Reconnect, StudentMachine, Transmit

DESC = {"x": {"shape": [-1, 1], "dtype": "int64", "lod_level": 0}}


def chunk(*ids: int) -> Chunk:
    a = np.array(ids, dtype=np.int64)
    return Chunk(a, {"x": a[:, None]})


def lost() -> ConnectionLostError:
    return ConnectionLostError("lost connection to the teacher")


class Driver:
    """Runs a machine the way :class:`~pantheon._online.source.OnlineSource` does: what a
    link's reader would hand over goes to the machine, a :class:`ProtocolError` it raises
    closes that link with it as the reason, and BYE closes the link after it."""

    def __init__(self, machine: StudentMachine) -> None:
        self.m = machine
        self.log: list[Any] = []

    def run(self, actions: list[Any]) -> list[Any]:
        self.log += actions
        return actions

    # -- what the driver sees

    def sent(self, link: int, kind: type = object) -> list[Event]:
        return [
            a.event
            for a in self.log
            if isinstance(a, Transmit) and a.link == link and isinstance(a.event, kind)
        ]

    def subs(self, link: int) -> list[Subscribe]:
        return [e for e in self.sent(link, Subscribe) if isinstance(e, Subscribe)]

    def sub(self, link: int) -> int:
        return self.subs(link)[-1].sub

    def reconnects(self) -> list[int]:
        return [a.link for a in self.log if isinstance(a, Reconnect)]

    # -- what happens to the links

    def up(self, link: int) -> list[Any]:
        return self.run(self.m.link_up(link))

    def down(self, link: int, reason: BaseException | None = None) -> list[Any]:
        return self.run(self.m.link_down(link, reason or lost()))

    def _deliver(self, link: int, handle: Any) -> None:
        try:
            handle()
        except ProtocolError as exc:  # the reader closes the link with the error
            self.down(link, exc)
            raise

    def data(self, link: int, *ids: int, sub: int | None = None, upto: int = 0) -> None:
        s = self.sub(link) if sub is None else sub
        self._deliver(link, lambda: self.m.on_data(link, s, upto, chunk(*ids)))

    def end(self, link: int, samples: int, sub: int | None = None) -> None:
        assert self.m.round is not None
        event = EndRound(self.sub(link) if sub is None else sub, self.m.round.round, samples)
        self._deliver(link, lambda: self.m.on_end(link, event))

    def answer(self, link: int, qid: int, *ids: int) -> None:
        self._deliver(link, lambda: self.m.on_answer(link, qid, chunk(*ids)))

    def bye(self, link: int) -> list[Any]:
        self.m.on_bye(link)
        return self.down(link, ConnectionLostError("the teacher closed the connection"))

    # -- the training loop

    def open(self, rnd: int = 0, position: int = 0) -> list[Any]:
        return self.run(self.m.open_round(rnd, position))

    def take(self) -> list[int] | None:
        got, actions = self.m.take()
        self.run(actions)
        return None if got is None else got.ids.tolist()

    def take_all(self) -> list[int]:
        out: list[int] = []
        while (ids := self.take()) is not None:
            out += ids
        return out

    def submit(self, qid: int, *ids: int) -> list[Any]:
        return self.run(self.m.submit(qid, chunk(*ids)))


def machine(links: int = 1, up: int = 1, **kwargs: Any) -> Driver:
    d = Driver(StudentMachine("teacher 0 (test)", links, **kwargs))
    for i in range(up):
        d.up(i)
    return d


# ---------------------------------------------------------------------- subscribing


def test_opening_a_round_subscribes_at_the_ranks_position_with_its_credits() -> None:
    d = machine(rank=2, world_size=4, credits=5)
    assert d.log == []  # connecting alone asks for nothing
    (act,) = d.open(rnd=3, position=3)
    assert isinstance(act, Transmit) and act.link == 0
    assert isinstance(act.event, Subscribe)
    assert (act.event.round, act.event.start, act.event.credits) == (3, 14, 5)  # 2 + 3*4
    assert d.m.round is not None and d.m.round.next == 14 and d.m.round.link == 0
    (again,) = d.open(rnd=4)
    assert isinstance(again.event, Subscribe) and again.event.sub != act.event.sub
    assert again.event.start == 2


def test_a_round_opened_with_no_link_up_connects_every_link_and_subscribes_on_the_first() -> None:
    d = machine(links=2, up=0, credits=4)
    assert d.open() == [Reconnect(0), Reconnect(1)]
    assert d.m.reconnecting()
    acts = d.up(1)
    assert len(acts) == 1 and acts[0].link == 1
    assert d.subs(1) == [Subscribe(d.sub(1), 0, 0, 4)]
    assert not d.m.reconnecting()
    assert d.up(0) == []  # the round is served by link 1 already


# ---------------------------------------------------------------------- data and ids


def test_data_in_order_is_held_until_taken() -> None:
    d = machine()
    d.open()
    d.data(0, 0, 1, 2, upto=5)
    d.data(0, 3, 4)
    assert d.m.round is not None and d.m.round.frontier == 5 and d.m.round.next == 5
    assert d.take() == [0, 1, 2]
    assert d.take() == [3, 4]
    assert d.take() is None


@pytest.mark.parametrize(
    ("second", "want"),
    [((1, 2), [2, 3]), ((3, 4), [2, 3]), ((3, 2), [2, 3]), ((), [])],
    ids=["duplicated", "skipped", "shuffled", "empty"],
)
def test_every_id_is_checked_and_a_bad_one_ends_the_teacher(
    second: tuple[int, ...], want: list[int]
) -> None:
    d = machine()
    d.open()
    d.data(0, 0, 1)
    with pytest.raises(ProtocolError, match=re.escape(f"where {want} were expected")) as exc:
        d.data(0, *second)
    assert d.m.error is exc.value  # the link closed with it: nothing reconnects
    assert d.reconnects() == []
    assert d.take() == [0, 1] and d.take() is None  # nothing of the bad chunk was kept
    with pytest.raises(ProtocolError):
        d.open(rnd=1)


def test_a_rank_accepts_only_the_samples_of_its_shard() -> None:
    d = machine(rank=1, world_size=3)
    d.open()
    assert d.subs(0)[0].start == 1
    d.data(0, 1, 4, 7)
    d.data(0, 10)
    assert d.m.round is not None and d.m.round.next == 13
    assert d.m.round.frontier == 11  # sample 10 was produced: 11 samples at least
    assert d.take_all() == [1, 4, 7, 10]
    with pytest.raises(ProtocolError, match=r"\[13, 16\] were expected \(rank 1 of 3\)"):
        d.data(0, 13, 14)  # 14 is rank 2's
    m = d.m
    assert [m.sample_of(p) for p in range(4)] == [1, 4, 7, 10]
    assert m.shard_count(10, 0) == 3  # 1, 4, 7
    assert m.shard_count(11, 0) == 4  # and 10
    assert m.shard_count(1, 0) == 0
    assert m.shard_count(11, 5) == 2  # 7, 10


# ---------------------------------------------------------------------- credits


def test_credits_go_back_in_groups_of_half_the_window() -> None:
    d = machine(credits=8)
    d.open()
    sub = d.sub(0)
    for i in range(8):
        d.data(0, i)
    got = [d.take() for _ in range(3)]
    assert got == [[0], [1], [2]] and d.sent(0, Credit) == []
    d.take()
    assert d.sent(0, Credit) == [Credit(sub, 4)]
    for _ in range(4):
        d.take()
    assert d.sent(0, Credit) == [Credit(sub, 4), Credit(sub, 4)]
    assert d.take() is None and len(d.sent(0, Credit)) == 2


def test_a_teacher_that_sends_past_its_credits_breaks_the_protocol() -> None:
    """The student appended whatever came: a teacher ignoring credits (a bug, or a hostile
    peer) grew the student's memory without bound (40 MB from 1000 chunks with 16
    credits)."""
    d = machine(credits=4)
    d.open()
    for i in range(4):
        d.data(0, i)
    assert d.take() == [0] and d.take() == [1]  # two credits back
    d.data(0, 4)
    d.data(0, 5)
    with pytest.raises(ProtocolError, match="7 knowledge messages .* credit for 6"):
        d.data(0, 6)


def test_a_window_of_one_returns_each_credit_at_once() -> None:
    d = machine(credits=1)
    d.open()
    assert d.subs(0)[0].credits == 1
    d.data(0, 0)
    d.take()
    assert d.sent(0, Credit) == [Credit(d.sub(0), 1)]


def test_credits_are_not_sent_on_a_link_that_is_down() -> None:
    d = machine(links=2, up=1, credits=2)
    d.open()
    d.data(0, 0)
    d.data(0, 1)
    d.down(0)
    assert d.take() == [0]  # the round waits for a link: no credit, none lost either
    assert d.sent(0, Credit) == []
    d.up(1)
    # the new subscription asks from sample 2 with room for what is not held
    assert d.subs(1) == [Subscribe(d.sub(1), 0, 2, 1)]


# ---------------------------------------------------------------------- END_ROUND


def test_end_round_with_the_right_count_ends_the_round() -> None:
    d = machine(rank=1, world_size=2)
    d.open()
    d.data(0, 1, 3, 5)
    d.data(0, 7)
    d.end(0, 9)  # rank 1's shard of 9 samples: 1, 3, 5, 7
    rnd = d.m.round
    assert rnd is not None and rnd.ended and rnd.samples == 9 and rnd.frontier == 9
    assert rnd.error is None
    assert d.take_all() == [1, 3, 5, 7]


def test_end_round_that_cuts_the_round_short_is_an_error() -> None:
    d = machine()
    d.open()
    d.data(0, 0, 1, 2, 3)
    with pytest.raises(ProtocolError, match="sample 4 of rank 0's shard never came"):
        d.end(0, 5)  # only the last sample is missing
    assert isinstance(d.m.error, ProtocolError) and d.reconnects() == []


def test_end_round_with_fewer_samples_than_were_sent_is_an_error() -> None:
    d = machine()
    d.open()
    d.data(0, 0, 1, 2, 3)
    with pytest.raises(
        ProtocolError, match="sent sample 3 of round 0, which it then said has only 3"
    ):
        d.end(0, 3)


def test_a_round_opened_at_its_end_is_empty_and_past_its_end_is_a_config_error() -> None:
    d = machine()
    d.open(position=5)
    d.end(0, 5)
    assert d.m.round is not None and d.m.round.ended and d.m.round.error is None
    assert d.take() is None
    d.open(rnd=1, position=7)
    d.end(0, 5)
    rnd = d.m.round
    assert rnd is not None and rnd.ended and isinstance(rnd.error, ConfigError)
    assert "position 7 of round 1 (sample 7), past the end" in str(rnd.error)
    assert d.m.error is None  # a state_dict that does not fit: not the teacher's fault


# ---------------------------------------------------------------------- reconnection


def test_a_lost_link_reconnects_and_resumes_at_the_first_sample_not_held() -> None:
    d = machine(credits=8)
    d.open()
    first = d.sub(0)
    d.data(0, 0, 1, 2)
    d.data(0, 3, 4, 5)
    assert d.take() == [0, 1, 2]
    assert d.down(0) == [Reconnect(0)]
    assert d.m.reconnecting()
    assert d.m.round is not None and d.m.round.link is None
    acts = d.up(0)
    assert len(acts) == 1 and d.subs(0)[-1] == Subscribe(d.sub(0), 0, 6, 7)
    assert d.sub(0) != first
    d.data(0, 3, 4, 5, sub=first)  # a late message of the old subscription: ignored
    d.data(0, 6, 7, 8)
    d.end(0, 9)
    assert d.take_all() == [3, 4, 5, 6, 7, 8]  # every sample exactly once


def test_a_lost_replica_fails_over_to_a_live_one_at_once() -> None:
    d = machine(links=2, up=2, rank=0, world_size=2, credits=8)
    d.open()
    old = d.sub(0)
    d.data(0, 0, 2)
    acts = d.down(0)
    assert acts[0] == Reconnect(0)
    assert d.subs(1) == [Subscribe(d.sub(1), 0, 4, 7)]  # room for 7: one chunk is held
    d.data(0, 4, 6, sub=old)  # stale: another link, another subscription
    d.data(1, 4, 6)
    assert d.up(0) == []  # back, but the round stays where it is
    assert d.down(0) == [Reconnect(0)]  # a link beside the round: the round is left alone
    assert len(d.subs(1)) == 1 and len(d.subs(0)) == 1
    d.end(1, 8)
    assert d.take_all() == [0, 2, 4, 6]
    d.data(1, 8, sub=old)  # ignored: no error for a stale stream
    assert d.m.error is None


def test_reconnection_gives_up_only_once_no_link_is_left() -> None:
    d = machine(links=2, up=2, credits=8)
    d.down(0)
    d.m.reconnect_failed(0, ConnectionLostError("refused"))
    assert d.m.error is None  # link 1 still serves
    d.down(1)
    d.m.reconnect_failed(1, ConnectionLostError("refused"))
    assert isinstance(d.m.error, TeacherError)
    assert str(d.m.error) == "teacher 0 (test) is gone: refused"
    d = machine(links=2, up=2, credits=8)
    d.down(0)
    d.m.reconnect_failed(0, ProtocolError("bad handshake"))  # cannot be mended by waiting
    assert isinstance(d.m.error, ProtocolError)


def test_a_retired_replica_is_never_reconnected_and_hands_on_its_round() -> None:
    d = machine(links=2, up=2, credits=8)
    d.open()
    d.data(0, 0, 1)
    acts = d.run(d.m.retire(0))
    assert acts == [Transmit(1, Subscribe(d.sub(1), 0, 2, 7))]
    assert d.down(0) == []  # its session closing afterwards reconnects nothing
    assert d.reconnects() == []


# ---------------------------------------------------------------------- errors and BYE


def test_an_error_from_the_teacher_fails_the_machine() -> None:
    d = machine()
    d.open()
    d.m.on_fail(Fail("the reader raised ValueError", ErrorCode.FAILED))
    assert isinstance(d.m.error, TeacherError)
    assert str(d.m.error) == "teacher 0 (test) reported: the reader raised ValueError"
    assert d.down(0) == []  # nothing to reconnect for
    with pytest.raises(TeacherError, match="ValueError"):
        d.open(rnd=1)
    with pytest.raises(TeacherError, match="ValueError"):
        d.submit(1, 0)
    d.m.on_fail(Fail("later"))
    assert "ValueError" in str(d.m.error)  # the first error stays


def test_too_many_rounds_is_refused_with_a_hint_or_before_asking() -> None:
    d = machine()
    d.m.on_fail(Fail("round 3 is not served", ErrorCode.ROUNDS))
    assert "serves fewer rounds than this student asked for" in str(d.m.error)
    d = machine()
    d.m.on_desc(Desc(DESC, {}, 2))
    d.open(rnd=1)
    with pytest.raises(TeacherError, match=r"served its 2 round\(s\)"):
        d.open(rnd=2)
    with pytest.raises(ProtocolError, match="bad codec"):
        d.m.on_desc(Desc(DESC, {"x": {"name": "no-such-codec"}}, 2))


def test_bye_reconnects_only_when_a_round_needs_it() -> None:
    d = machine()
    d.open()
    d.data(0, 0)
    d.end(0, 1)
    assert d.bye(0) == []  # the round ended: nothing to come back for
    assert not d.m.reconnecting()
    d = machine()
    d.open()
    d.data(0, 0)
    assert d.bye(0) == [Reconnect(0)]  # in the middle of a round: it must come back
    d.up(0)
    assert d.subs(0)[-1].start == 1
    assert not d.m.links[0].said_bye
    d.m.closed = True  # this side closed: nothing comes back, round or not
    assert d.run(d.m.link_down(0, None)) == []


# ---------------------------------------------------------------------- after a round


def test_after_the_end_of_a_round() -> None:
    d = machine()
    d.open()
    d.data(0, 0, 1)
    d.end(0, 2)
    assert d.down(0) == [Reconnect(0)]  # dropped without BYE: keep a link for later
    assert d.up(0) == []  # but the ended round is not subscribed again
    assert len(d.subs(0)) == 1
    assert d.take_all() == [0, 1]  # what was held is still handed out
    assert d.run(d.m.ack_round(0)) == [Transmit(0, RoundDone(0))]
    d.down(0)
    d.up(0)
    assert d.sent(0, RoundDone) == [RoundDone(0), RoundDone(0)]  # told again on connecting
    d.run(d.m.ack_round(0))
    assert d.m.acked == [0]


def test_leaving_tells_the_acknowledgements_to_links_not_up_yet() -> None:
    """A goodbye while a reconnection is under way: the new connection may not have heard
    the round was done, so the acknowledgements go before the goodbye; a link that is up
    heard them when it came up."""
    d = machine(links=2)
    d.open()
    d.data(0, 0, 1)
    d.end(0, 2)
    d.take_all()
    d.run(d.m.ack_round(0))
    assert d.m.leaving() == [Transmit(1, RoundDone(0))]
    d.down(0)
    assert d.m.leaving() == [Transmit(0, RoundDone(0)), Transmit(1, RoundDone(0))]


def test_a_byte_window_is_asked_for_and_returned_by_bytes_or_when_drained() -> None:
    """The subscription carries the window less what the student holds; credits go back
    once half the window's bytes were taken, or every chunk held was (the teacher's count
    of bytes, before codecs, may differ from the student's)."""
    d = machine(credits=16, window=40)
    d.open()
    assert d.subs(0)[-1].window == 40
    d.data(0, 0, 1)  # 16 bytes
    d.data(0, 2, 3)
    d.data(0, 4, 5)
    got, acts = d.m.take()
    assert got is not None and got.ids.tolist() == [0, 1]
    assert acts == []  # 16 of 40 taken, two chunks still held
    got, acts = d.m.take()
    assert got is not None and got.ids.tolist() == [2, 3]
    assert acts == [Transmit(0, Credit(d.sub(0), 2))]  # 32 >= 40 / 2
    got, acts = d.m.take()
    assert got is not None and got.ids.tolist() == [4, 5]
    assert acts == [Transmit(0, Credit(d.sub(0), 1))]  # drained: 16 bytes, but nothing held
    d.data(0, 6, 7)
    d.data(0, 8, 9)
    d.down(0)
    d.up(0)
    assert d.subs(0)[-1].window == 40 - 32 and d.subs(0)[-1].start == 10


def test_without_a_byte_window_credits_go_back_by_count_only() -> None:
    d = machine(credits=4)
    d.open()
    assert d.subs(0)[-1].window == 0
    d.data(0, 0)
    d.data(0, 1)
    d.data(0, 2)
    assert d.m.take()[1] == []
    assert d.m.take()[1] == [Transmit(0, Credit(d.sub(0), 2))]
    assert d.m.take()[1] == []  # drained, but only a byte window returns early


def test_knowledge_after_end_round_is_an_error() -> None:
    d = machine()
    d.open()
    d.data(0, 0, 1)
    d.end(0, 2)
    with pytest.raises(ProtocolError, match="after it ended the round"):
        d.data(0, 2)
    assert d.take_all() == [0, 1]


def test_an_abandoned_round_ignores_its_stream() -> None:
    d = machine()
    d.open()
    old = d.m.round
    assert old is not None
    d.data(0, 0)
    d.m.close_round(old)
    assert d.m.round is None and d.take() is None
    d.data(0, 1, sub=old.sub)  # still in flight: ignored
    d.open(rnd=1)
    d.data(0, 5, sub=old.sub)
    d.data(0, 0)
    assert old.closed and [c.ids.tolist() for c in old.chunks] == [[0]]
    assert d.take_all() == [0]


# ---------------------------------------------------------------------- queries


def test_queries_go_to_the_least_busy_link_and_answers_match_by_qid() -> None:
    d = machine(links=2, up=2)
    for qid in (1, 2, 3):
        d.submit(qid, qid * 10, qid * 10 + 1)
    assert d.sent(0, Query) == [Query(1), Query(3)] and d.sent(1, Query) == [Query(2)]
    d.answer(1, 2, 20, 21)
    d.answer(0, 3, 30, 31)
    assert sorted(d.m.answers) == [2, 3]
    assert d.m.answers[3].ids.tolist() == [30, 31]  # type: ignore[union-attr]
    d.answer(0, 3, 30, 31)  # answered twice: the second is dropped
    d.submit(4, 40)
    assert d.sent(1, Query) == [Query(2), Query(4)]  # link 1 holds nothing now, link 0 holds 1
    with pytest.raises(ProtocolError, match="answered query 1 with other sample ids"):
        d.answer(0, 1, 11, 10)


def test_a_failed_query_fails_only_that_query() -> None:
    d = machine()
    d.submit(1, 0)
    d.submit(2, 1)
    d.m.on_fail(Fail("bad feed", ErrorCode.BAD_REQUEST, qid=1))
    assert d.m.error is None
    err = d.m.answers[1]
    assert isinstance(err, TeacherError) and "bad feed" in str(err)
    assert list(d.m.links[0].outstanding) == [2]
    d.answer(0, 2, 1)
    assert isinstance(d.m.answers[2], Chunk)


def test_forgotten_queries_are_neither_kept_nor_sent_again() -> None:
    """A query generator left early forgets its queries in flight: their answers, come or
    to come, are dropped, and a fail-over does not send them again."""
    d = machine(links=2, up=2)
    d.submit(1, 0)
    d.submit(2, 1)
    d.submit(3, 2)
    d.answer(1, 2, 1)  # came before the generator was left
    d.m.forget([1, 2, 3])
    assert d.m.answers == {}
    d.answer(0, 1, 0)  # late: nobody asks for it any more
    assert d.m.answers == {}
    acts = d.down(0)  # queries 1 and 3 were in flight there: nothing to send again
    assert not [a for a in acts if isinstance(a, Transmit)]
    assert d.m.links[0].outstanding == {} and d.m.links[1].outstanding == {}


def test_a_replica_not_reached_at_the_start_is_connected_in_the_background() -> None:
    d = machine(links=2, up=1)
    assert d.m.not_reached(1) == [Reconnect(1)]
    assert d.m.not_reached(1) == []  # it is being connected already
    assert d.m.not_reached(0) == []  # up


def test_when_the_last_link_goes_down_mid_round_the_replicas_given_up_on_are_tried() -> None:
    """A replica whose reconnection gave up (or that was never reached) was never tried
    again: with the link in use gone mid-round, the teacher was declared gone although
    the replica was running again."""
    d = machine(links=2, up=2)
    d.down(1)
    d.m.reconnect_failed(1, TeacherError("not reachable"))
    assert d.m.error is None  # link 0 is up
    d.run(d.m.open_round(0, 0))
    acts = d.down(0)
    assert Reconnect(0) in acts and Reconnect(1) in acts


def test_the_queries_of_a_dead_link_are_sent_again_elsewhere() -> None:
    d = machine(links=2, up=2)
    d.submit(1, 0)
    d.submit(2, 1)
    d.submit(3, 2)
    acts = d.down(0)
    assert acts[0] == Reconnect(0)
    assert d.sent(1, Query) == [Query(2), Query(1), Query(3)]
    for qid, ids in ((1, 0), (2, 1), (3, 2)):
        d.answer(1, qid, ids)
    assert sorted(d.m.answers) == [1, 2, 3]
    assert d.m.links[1].outstanding == {}


def test_a_query_in_flight_on_the_only_link_is_sent_again_once_it_is_back() -> None:
    """Regression: the queries parked on link 0 were kept as in flight, never re-sent, when
    link 0 itself came back (the only link of a teacher of one address)."""
    d = machine()
    d.submit(7, 3, 4)
    assert d.down(0) == [Reconnect(0)]
    acts = d.up(0)
    assert [(a.link, a.event) for a in acts] == [(0, Query(7))]
    assert acts[0].chunk.ids.tolist() == [3, 4]
    d.answer(0, 7, 3, 4)
    assert 7 in d.m.answers


def test_a_query_with_no_link_up_is_parked_and_sent_on_connecting() -> None:
    d = machine(links=2, up=0)
    assert d.submit(1, 0) == [Reconnect(0), Reconnect(1)]
    d.submit(2, 1)  # reconnecting already: asks for nothing more
    assert d.reconnects() == [0, 1]
    d.up(0)
    assert d.sent(0, Query) == [Query(1), Query(2)]
    d.up(1)
    assert d.sent(1, Query) == []
