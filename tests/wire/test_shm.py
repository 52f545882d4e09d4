"""The same-host transport's ring, its mapping and the connection wrappers, in one process:
a real sealed memfd, mapped a second time through /proc as a teacher does, and in-memory
connections."""

from __future__ import annotations

import gc
import os
import sys
import threading

import numpy as np
import pytest

from pantheon._errors import ConfigError, ConnectionLostError, PantheonTimeoutError, ProtocolError
from pantheon._wire import (
    FRAME_ALIGN,
    MsgType,
    Pieces,
    Ring,
    ShmReceiver,
    ShmSender,
    accept_offer,
    decode_parts,
    encode_parts,
    inproc_pair,
    map_offer,
    read_ready,
    shm_unavailable,
)
from pantheon._wire.ring import HEADER_BYTES, RingMapping

pytestmark = pytest.mark.skipif(shm_unavailable() is not None, reason=str(shm_unavailable()))

SLOT = 64 * 1024


def ring_maps() -> int:
    """Mappings of rings in this process (each ring, and each teacher-side mapping, is one)."""
    with open("/proc/self/maps") as f:
        return sum("memfd:pantheon-ring" in line for line in f)


@pytest.fixture
def pair() -> tuple[Ring, RingMapping]:
    ring = Ring(slots=4, slot_bytes=SLOT)
    mapping, why = map_offer(ring.offer())
    assert mapping is not None, why
    yield ring, mapping
    mapping.close()
    ring.close()


def wrapped(ring: Ring, send_timeout: float = 10.0) -> tuple[ShmSender, ShmReceiver]:
    """Both ends of an in-memory connection over which ``ring`` was offered and mapped."""
    teacher_end, student_end = inproc_pair()
    sender = accept_offer(teacher_end, ring.offer(), timeout=5)
    assert isinstance(sender, ShmSender)
    assert read_ready(student_end, timeout=5) == (True, "")
    return sender, ShmReceiver(student_end, ring, send_timeout=send_timeout)


def test_frames_placed_by_the_teacher_are_views_of_the_students_ring(pair) -> None:
    ring, mapping = pair
    a = np.arange(1000, dtype=np.float32)
    b = np.arange(7, dtype=np.int64)
    where = mapping.place([a, b.data.cast("B")])
    assert where is not None and where[0] == 0
    assert where[1:] == [0, a.nbytes, -(-a.nbytes // FRAME_ALIGN) * FRAME_ALIGN, b.nbytes]
    frames = ring.frames(where, max_frames=16)
    np.testing.assert_array_equal(np.frombuffer(frames[0], np.float32), a)
    np.testing.assert_array_equal(np.frombuffer(frames[1], np.int64), b)
    assert ring.lent == 1 and mapping.free == 3


def test_a_slot_comes_back_only_when_nothing_references_its_arrays(pair) -> None:
    ring, mapping = pair
    where = mapping.place([np.ones(10, np.float64)])
    frames = ring.frames(where, 16)
    arr = np.frombuffer(frames[0], np.float64)[2:5]  # a view of a view
    del frames
    assert ring.collect() == []  # arr still holds the slot
    held = arr.copy()
    del arr
    gc.collect()
    assert ring.collect() == [where[0]]
    mapping.release([where[0]])
    assert mapping.free == 4
    np.testing.assert_array_equal(held, 1.0)


def test_collecting_after_the_ring_closed_gives_nothing_back(pair) -> None:
    """The student's reader may collect after another thread closed the ring (a connection
    closed while a message came): nothing is given back, and nothing fails."""
    ring, mapping = pair
    frames = ring.frames(mapping.place([np.ones(10, np.float64)]), 16)
    del frames
    gc.collect()
    ring.close()
    assert ring.lent == 1
    assert ring.collect() == []


def test_a_message_placed_in_a_ring_closed_meanwhile_is_a_lost_connection(pair) -> None:
    """Not a protocol error, which fails the teacher for good on the student's side: the
    connection closed while the message came, and reconnecting mends that."""
    ring, mapping = pair
    where = mapping.place([np.ones(10, np.float64)])
    ring.close()
    with pytest.raises(ConnectionLostError, match="ring is closed"):
        ring.frames(where, 16)


def test_no_free_slot_or_a_message_bigger_than_a_slot_falls_back(pair) -> None:
    ring, mapping = pair
    assert mapping.place([np.zeros(SLOT + 1, np.uint8)]) is None
    held = [ring.frames(mapping.place([np.zeros(8, np.uint8)]), 16) for _ in range(4)]
    assert mapping.place([np.zeros(8, np.uint8)]) is None
    assert mapping.fell_back == 2 and mapping.placed == 4
    assert len(held) == 4


def test_a_frame_of_pieces_is_copied_into_the_slot_back_to_back(pair) -> None:
    """Frames gathered from several buffers (a joined message) are one frame in the slot:
    the pieces' bytes in order; a gathered message larger than a slot falls back."""
    ring, mapping = pair
    a, b = np.arange(10, dtype=np.float32), np.arange(10, 17, dtype=np.float32)
    ids = np.arange(3, dtype=np.int64)
    where = mapping.place([Pieces([ids[:1], ids[1:]]), Pieces([a, b.data.cast("B")])])
    assert where is not None
    assert where[2] == ids.nbytes and where[4] == a.nbytes + b.nbytes
    frames = ring.frames(where, max_frames=16)
    np.testing.assert_array_equal(np.frombuffer(frames[0], np.int64), ids)
    np.testing.assert_array_equal(np.frombuffer(frames[1], np.float32), np.arange(17))
    big = np.zeros(SLOT // 2 + 1, np.uint8)
    assert mapping.place([Pieces([big, big])]) is None
    assert mapping.fell_back == 1


def test_held_arrays_stay_valid_and_unchanged_while_later_messages_come(pair) -> None:
    ring, mapping = pair
    kept = []
    for i in range(40):
        where = mapping.place([np.full(100, i, np.int32)])
        if where is None:  # every slot held: the message would go over TCP
            continue
        arr = np.frombuffer(ring.frames(where, 16)[0], np.int32)
        if i % 3 == 0:
            kept.append((i, arr))  # the training loop keeps some batches
        del arr
        mapping.release(ring.collect())
    for i, arr in kept:
        np.testing.assert_array_equal(arr, i)


def test_a_malformed_placement_is_a_protocol_error(pair) -> None:
    ring, mapping = pair
    for bad in ([9, 0, 8], [0, 1, 8], [0, 0, SLOT + 1], [0, 0], "0", [0, -64, 8], [0.5, 0, 8]):
        with pytest.raises(ProtocolError):
            ring.frames(bad, 16)
    with pytest.raises(ProtocolError, match="at most 2 frames"):
        ring.frames([0, 0, 8, 64, 8, 128, 8], 2)
    ring.frames([1, 0, 8], 16)
    with pytest.raises(ProtocolError, match="lent"):
        ring.frames([1, 0, 8], 16)  # the teacher may not reuse a slot the student holds
    with pytest.raises(ProtocolError, match="not lent"):
        mapping.release([2])  # never placed
    with pytest.raises(ProtocolError, match="list"):
        mapping.release("0")


def test_offers_that_do_not_hold_are_refused_with_the_reason() -> None:
    ring = Ring(slots=2, slot_bytes=SLOT)
    try:
        good = ring.offer()
        cases = {
            "another host": {**good, "boot": "not-this-boot"},
            "not a ring": {**good, "fd": 0},
            "cannot open": {**good, "pid": 2**31 - 2},
            "header and key": {**good, "key": b"k" * 32},
            "size it declared": {**good, "slots": 3},
        }
        for expected, offer in cases.items():
            mapping, why = map_offer(offer)
            assert mapping is None and why, expected
        for bad in ({**good, "key": "text"}, {**good, "slots": 0}, {**good, "v": 99}, [1]):
            with pytest.raises(ProtocolError):
                map_offer(bad)
    finally:
        ring.close()


def test_an_unsealed_memfd_is_refused() -> None:
    ring = Ring(slots=2, slot_bytes=SLOT)
    fd = os.memfd_create("pantheon-ring", os.MFD_CLOEXEC)  # same name, no seals
    try:
        os.ftruncate(fd, ring.size)
        mapping, why = map_offer({**ring.offer(), "fd": fd})
        assert mapping is None and "sealed" in why
    finally:
        os.close(fd)
        ring.close()


def test_the_ring_cannot_shrink_under_a_teacher() -> None:
    ring = Ring(slots=2, slot_bytes=SLOT)
    try:
        assert ring.fd is not None
        with pytest.raises(PermissionError):
            os.ftruncate(ring.fd, HEADER_BYTES)
    finally:
        ring.close()


def test_turned_off_by_the_environment(monkeypatch) -> None:
    ring = Ring(slots=2, slot_bytes=SLOT)
    try:
        monkeypatch.setenv("PANTHEON_SHM", "0")
        assert "PANTHEON_SHM=0" in str(shm_unavailable())
        mapping, why = map_offer(ring.offer())
        assert mapping is None and "PANTHEON_SHM=0" in why
    finally:
        ring.close()


def test_bad_geometry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="slots"):
        Ring(slots=0)
    with pytest.raises(ConfigError, match="multiple"):
        Ring(slots=1, slot_bytes=SLOT + 1)


def test_wrapped_connections_carry_data_through_the_ring_and_the_rest_over_the_socket() -> None:
    ring = Ring(slots=2, slot_bytes=SLOT)
    sender, receiver = wrapped(ring)
    ids = np.arange(5, dtype=np.int64)
    header, frames = encode_parts(ids, {("x", ""): np.full((5, 3), 2.5, np.float32)})
    sender.send(MsgType.DATA, header, frames)
    sender.send(MsgType.USER, {"value": 1}, [b"abc"])  # other types: over the socket
    msg = receiver.recv(timeout=5)
    assert "shm" not in msg.header and msg.type == MsgType.DATA
    got_ids, parts = decode_parts(msg.header, msg.frames)
    np.testing.assert_array_equal(got_ids, ids)
    x = parts[("x", "")]
    np.testing.assert_array_equal(x, 2.5)
    assert receiver.recv(timeout=5).frames[0].tobytes() == b"abc"
    assert receiver.received == 1 and ring.lent == 1
    del msg, parts, x, frames, got_ids  # ids are views of the slot too
    gc.collect()
    receiver.send(MsgType.CREDIT, {"n": 1})  # freed slots are given back before it
    assert sender.recv(timeout=5).type == MsgType.CREDIT  # SHM_FREE consumed on the way
    assert sender.mapping.free == 2
    maps = ring_maps()
    sender.close()
    receiver.close()
    assert ring_maps() == maps - 2


def test_a_refusal_is_read_with_its_reason() -> None:
    teacher_end, student_end = inproc_pair()
    conn = accept_offer(teacher_end, {**Ring(slots=1, slot_bytes=SLOT).offer(), "boot": "x"}, 5)
    assert conn is teacher_end
    ok, why = read_ready(student_end, timeout=5)
    assert not ok and "another host" in why
    teacher_end.send(MsgType.PING)
    with pytest.raises(ProtocolError, match="SHM_READY"):
        read_ready(student_end, timeout=5)


def test_memory_goes_with_the_last_view() -> None:
    gc.collect()
    before = ring_maps()
    ring = Ring(slots=1, slot_bytes=SLOT)
    mapping, _ = map_offer(ring.offer())
    assert mapping is not None
    arr = np.frombuffer(ring.frames(mapping.place([np.ones(4)]), 4)[0], np.float64)
    mapping.close()
    ring.close()  # the training loop still holds arr: it stays valid
    np.testing.assert_array_equal(arr, 1.0)
    assert ring_maps() == before + 1
    del arr
    gc.collect()
    assert ring_maps() == before


def test_freed_slots_go_back_in_groups_and_at_once_when_half_the_ring_is_away() -> None:
    sender, receiver = wrapped(Ring(slots=24, slot_bytes=SLOT))
    assert receiver.return_batch == 4
    header, frames = encode_parts(np.arange(2, dtype=np.int64), {("x", ""): np.ones(2)})

    def one() -> None:  # a message through the ring, received and dropped at once
        sender.send(MsgType.DATA, header, frames)
        receiver.recv(timeout=5)
        gc.collect()

    def given_back() -> int:  # what the teacher was told, read through a PING after it
        receiver.send(MsgType.PING)
        assert sender.recv(timeout=5).type == MsgType.PING
        return sender.mapping.free

    for _ in range(3):
        one()
    assert given_back() == 21  # 3 freed: not yet worth a message
    one()
    assert given_back() == 24  # the fourth: all four in one SHM_FREE
    held = []
    for _ in range(11):
        sender.send(MsgType.DATA, header, frames)
        held.append(receiver.recv(timeout=5))
    one()  # 11 lent and 1 freed: half the ring is away, so the one freed goes back at once
    assert given_back() == 24 - 11
    del held
    gc.collect()
    assert given_back() == 24
    sender.close()
    receiver.close()


def test_slots_freed_while_several_threads_send_are_each_given_back_once() -> None:
    sender, receiver = wrapped(Ring(slots=24, slot_bytes=SLOT))
    header, frames = encode_parts(np.arange(2, dtype=np.int64), {("x", ""): np.ones(2)})
    stop = threading.Event()
    errors: list[BaseException] = []

    def teacher_reads() -> None:  # SHM_FREE is handled (and a double free refused) in recv
        while not stop.is_set():
            try:
                sender.recv(timeout=0.05)
            except PantheonTimeoutError:
                continue
            except BaseException as exc:
                errors.append(exc)
                return

    def pings() -> None:  # the heartbeat and the training loop send while the reader receives
        while not stop.is_set():
            receiver.send(MsgType.PING)

    threads = [threading.Thread(target=teacher_reads)] + [
        threading.Thread(target=pings) for _ in range(3)
    ]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two bytecodes
    for t in threads:
        t.start()
    try:
        for _ in range(2000):
            sender.send(MsgType.DATA, header, frames)
            receiver.recv(timeout=5)  # dropped at once: its slot is free again
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        sys.setswitchinterval(switch)
    assert not errors, errors
    receiver.send(MsgType.PING)  # a last look for freed slots
    while True:  # read what came; every slot is free or waiting to be given back, once
        try:
            sender.recv(timeout=0.2)
        except PantheonTimeoutError:
            break
    assert sender.mapping.free + len(receiver._freed) == 24
    sender.close()
    receiver.close()


def test_slots_whose_give_back_timed_out_are_given_back_later() -> None:
    """The SHM_FREE could not be sent in time (another thread held the connection): the
    slots it carried are told with the next one, not lost to the teacher for good."""
    sender, receiver = wrapped(Ring(slots=24, slot_bytes=SLOT), send_timeout=0.05)
    header, frames = encode_parts(np.arange(2, dtype=np.int64), {("x", ""): np.ones(2)})
    for _ in range(3):
        sender.send(MsgType.DATA, header, frames)
        receiver.recv(timeout=5)
        gc.collect()
    sender.send(MsgType.DATA, header, frames)
    busy = receiver.inner._send_lock  # another thread sending, as a long send would
    assert busy.acquire(timeout=5)
    try:
        receiver.recv(timeout=5)  # its give-back of the four times out, quietly
        gc.collect()
        with pytest.raises(PantheonTimeoutError):
            receiver.send(MsgType.PING)
    finally:
        busy.release()
    assert sorted(receiver._freed) == sorted(set(receiver._freed)) and len(receiver._freed) == 4
    receiver.send(MsgType.PING)
    assert sender.recv(timeout=5).type == MsgType.PING
    assert sender.mapping.free == 24
    sender.close()
    receiver.close()
