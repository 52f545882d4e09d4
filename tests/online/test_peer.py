"""A teacher's peer: its outbox sent by the sender thread or by the thread that queued the
knowledge (``Peer.drain``), in order and exactly once whoever sends, over a real in-memory
connection."""

from __future__ import annotations

import threading

import pytest

from pantheon._online.messages import Hello
from pantheon._online.peer import CallerSends, Peer
from pantheon._wire import Heartbeat, MsgType, Ring, inproc_pair, shm_unavailable
from pantheon._wire.ring import map_offer
from pantheon._wire.shm import ShmSender

HELLO = Hello(client="c", role="student", group="default", rank=0, world_size=1)


def make_peer(conn) -> Peer:
    return Peer(0, conn, HELLO, on_message=lambda p, m: None, on_close=lambda p, r: None,
                heartbeat=Heartbeat(1.0, 30.0)).start()  # fmt: skip


def received(conn, n: int) -> list[int]:
    out = []
    while len(out) < n:
        msg = conn.recv(timeout=10)
        if msg.type == MsgType.USER:
            out.append(msg.header["i"])
    return out


def message(i: int):
    return lambda: (MsgType.USER, {"i": i}, ())


def test_every_message_arrives_once_in_order_whichever_thread_sends_it() -> None:
    teacher_end, student_end = inproc_pair()
    peer = make_peer(teacher_end)
    n, threads = 600, 3
    lock = threading.Lock()  # the teacher's lock: messages are queued in one order
    counter = iter(range(n))

    def work(k: int) -> None:
        while True:
            with lock:
                i = next(counter, None)
                if i is None:
                    return
                by_caller = (i + k) % 3 != 0  # a mix: some wake the sender thread
                peer.send_lazy(message(i), by_caller=by_caller)
            peer.drain()

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    assert received(student_end, n) == list(range(n))
    peer.close()


def test_a_drain_while_another_thread_sends_leaves_nothing_behind() -> None:
    teacher_end, student_end = inproc_pair()
    peer = make_peer(teacher_end)
    with peer._send_lock:  # another thread is sending this peer's outbox
        peer.send_lazy(message(0), by_caller=True)
        peer.drain()  # cannot send: wakes the sender thread instead
    assert received(student_end, 1) == [0]  # the sender thread sent it
    peer.close()


def test_close_after_sends_sends_what_was_queued_then_bye() -> None:
    teacher_end, student_end = inproc_pair()
    peer = make_peer(teacher_end)
    peer.send_lazy(message(1), by_caller=True)
    peer.close_after_sends()
    peer.drain()
    types = []
    while True:
        msg = student_end.recv(timeout=10)
        if msg.type != MsgType.PING:
            types.append(msg.type)
        if msg.type == MsgType.BYE:
            break
    assert types == [MsgType.USER, MsgType.BYE]


@pytest.mark.skipif(shm_unavailable() is not None, reason=str(shm_unavailable()))
def test_only_knowledge_for_a_shared_memory_peer_is_sent_by_the_deciding_thread() -> None:
    sends = CallerSends()
    tcp_peer = make_peer(inproc_pair()[0])
    ring = Ring(slots=2, slot_bytes=64 * 1024)
    mapping, why = map_offer(ring.offer())
    assert mapping is not None, why
    shm_peer = make_peer(ShmSender(inproc_pair()[0], mapping))
    assert not sends.by_caller(shm_peer)  # outside a deferring section: the sender thread
    seen = []
    run = sends.deferring(lambda _a: seen.extend([sends.by_caller(shm_peer),
                                                   sends.by_caller(tcp_peer)]))  # fmt: skip
    run([])
    assert seen == [True, False]
    assert not sends.by_caller(shm_peer)  # the section ended
    sends.drain()
    tcp_peer.close()
    shm_peer.close()
    ring.close()
