"""The wire: framing, TCP and in-memory connections, caps and hostile input."""

from __future__ import annotations

import pickle
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pytest

from pantheon import (
    ClosedError,
    ConfigError,
    ConnectionLostError,
    PantheonTimeoutError,
    ProtocolError,
)
from pantheon._wire import (
    FRAME_ALIGN,
    MAGIC,
    PREFIX_SIZE,
    BufferPool,
    Connection,
    Listener,
    Message,
    MsgType,
    StreamConnection,
    connect,
    inproc_pair,
    listen,
    parse_address,
)
from pantheon._wire import tcp as wire_tcp
from tests.helpers import Runner

MIB = 1 << 20


def tcp_pair(listener: Listener) -> tuple[Connection, Connection]:
    client = connect(listener.address, timeout=10)
    server = listener.accept(timeout=10)
    return client, server


@pytest.fixture
def listener() -> Iterator[Listener]:
    with listen() as lst:
        yield lst


@pytest.fixture(params=["tcp", "inproc"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Connection, Connection]]:
    if request.param == "tcp":
        with listen() as lst:
            a, b = tcp_pair(lst)
    else:
        a, b = inproc_pair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def raw(listener: Listener) -> Iterator[tuple[socket.socket, Connection]]:
    """A plain socket connected to a Pantheon connection (to write arbitrary bytes)."""
    host, port = parse_address(listener.address)
    sock = socket.create_connection((host, port), timeout=10)
    conn = listener.accept(timeout=10)
    yield sock, conn
    sock.close()
    conn.close()


def prefix(
    type: int = 32, hlen: int = 0, nframes: int = 0, *, magic: bytes = MAGIC, fmt: int = 1
) -> bytes:
    return struct.pack("<4sBBHII", magic, fmt, 0, type, hlen, nframes)


def message(type: int, header: dict[str, Any], frames: list[bytes]) -> bytes:
    h = msgpack.packb(header) if header else b""
    table = struct.pack(f"<{len(frames)}Q", *[len(f) for f in frames])
    return prefix(type, len(h), len(frames)) + table + h + b"".join(frames)


# -- round trips ---------------------------------------------------------------------------


def test_header_only(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    size = a.send(
        MsgType.PING, {"seq": 1, "name": "x", "blob": b"\x00\xff", "list": [1, 2.5, None]}
    )
    msg = b.recv(timeout=10)
    assert msg.type == MsgType.PING
    assert isinstance(msg.type, MsgType)
    assert msg.header == {"seq": 1, "name": "x", "blob": b"\x00\xff", "list": [1, 2.5, None]}
    assert msg.frames == []
    assert a.bytes_sent == size == b.bytes_received
    assert a.messages_sent == 1 == b.messages_received


def test_large_header_grows_the_staging_buffer(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    header = {"blob": b"h" * 900_000, "text": "t" * 50_000}
    runner = Runner(lambda: [a.send(MsgType.DESC, header, [b"f" * 10]) for _ in range(3)])
    for _ in range(3):
        msg = b.recv(timeout=10)
        assert msg.header == header
        assert bytes(msg.frames[0]) == b"f" * 10
    runner.join()


def test_no_header_no_frames(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    assert a.send(MsgType.BYE) == 16
    msg = b.recv(timeout=10)
    assert msg == (MsgType.BYE, {}, [])


def test_empty_and_small_frames(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    frames = [b"", b"a", b"", bytearray(b"bc"), memoryview(b"def"), b""]
    a.send(MsgType.DATA, {}, frames)
    msg = b.recv(timeout=10)
    assert [bytes(f) for f in msg.frames] == [bytes(f) for f in frames]
    assert all(not f.readonly for f in msg.frames)


def test_many_frames(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=int(n), dtype=np.uint8) for n in rng.integers(0, 300, 4096)]
    runner = Runner(lambda: a.send(MsgType.DATA, {"n": len(frames)}, frames))
    msg = b.recv(timeout=30)
    runner.join()
    assert len(msg.frames) == 4096
    for got, want in zip(msg.frames, frames, strict=True):
        assert bytes(got) == want.tobytes()


def test_64_mib_frame(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    data = np.random.default_rng(1).integers(0, 2**63, size=64 * MIB // 8, dtype=np.int64)
    runner = Runner(lambda: a.send(MsgType.DATA, {"k": "big"}, [data, b"tail"]))
    msg = b.recv(timeout=60)
    runner.join()
    got = np.frombuffer(msg.frames[0], dtype=np.int64)
    assert np.array_equal(got, data)
    assert bytes(msg.frames[1]) == b"tail"


def test_send_without_sendmsg(
    pair: tuple[Connection, Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Platforms without sendmsg (Windows) send buffer by buffer."""
    monkeypatch.setattr(wire_tcp, "_HAS_SENDMSG", False)
    a, b = pair
    big = np.arange(3 * MIB, dtype=np.uint8)
    runner = Runner(lambda: a.send(MsgType.DATA, {"h": 1}, [b"", big, b"end"]))
    msg = b.recv(timeout=30)
    runner.join()
    assert np.array_equal(np.frombuffer(msg.frames[1], np.uint8), big)
    assert [bytes(msg.frames[0]), bytes(msg.frames[2])] == [b"", b"end"]


def test_frames_are_aligned_writable_views(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    a.send(MsgType.DATA, {}, [b"x", np.arange(3, dtype=np.float64), b"yyy", np.ones(5, np.int32)])
    msg = b.recv(timeout=10)
    for f in msg.frames:
        arr = np.frombuffer(f, dtype=np.uint8)
        assert arr.ctypes.data % 16 == 0  # small messages: malloc alignment suits every dtype
        arr[:] = 0  # writable
    assert np.array_equal(np.frombuffer(msg.frames[1], np.float64), [0, 0, 0])
    a.send(MsgType.DATA, {}, [b"x", np.ones(100_000, np.float32), b"yyy"])
    msg = b.recv(timeout=10)
    for f in msg.frames:  # large messages: FRAME_ALIGN in memory
        assert np.frombuffer(f, dtype=np.uint8).ctypes.data % FRAME_ALIGN == 0


def test_array_frames_of_any_shape_and_dtype(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    f32 = np.arange(12, dtype=np.float32).reshape(3, 4)
    bf16 = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3)
    scalar = np.array(7, dtype=np.int16)
    a.send(MsgType.DATA, {}, [f32, bf16, scalar])
    msg = b.recv(timeout=10)
    assert np.array_equal(np.frombuffer(msg.frames[0], np.float32).reshape(3, 4), f32)
    assert np.array_equal(np.frombuffer(msg.frames[1], ml_dtypes.bfloat16).reshape(2, 3), bf16)
    assert np.frombuffer(msg.frames[2], np.int16)[0] == 7


def test_alloc_hook_recycles_buffers(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    pool = [bytearray(1 * MIB)]
    calls: list[int] = []

    def alloc(n: int) -> bytearray:
        calls.append(n)
        return pool[0]

    for i in range(3):
        a.send(MsgType.DATA, {}, [bytes([i]) * 100, bytes([i + 1]) * 200_000])
        msg = b.recv(timeout=10, alloc=alloc)
        assert bytes(msg.frames[0]) == bytes([i]) * 100
        assert bytes(msg.frames[1]) == bytes([i + 1]) * 200_000
        assert msg.frames[1].obj is pool[0]
    assert calls == [128 + 200_000] * 3


def test_buffer_pool_recycles_only_unreferenced_buffers(
    pair: tuple[Connection, Connection],
) -> None:
    a, b = pair
    pool = BufferPool(max_buffers=2)

    def roundtrip(fill: int) -> Message:
        a.send(MsgType.DATA, {}, [bytes([fill]) * 100_000])
        return b.recv(timeout=10, alloc=pool)

    kept = np.frombuffer(roundtrip(1).frames[0], np.uint8)  # its message is gone, the array not
    for i in range(10):
        msg = roundtrip(i + 2)
        assert np.frombuffer(msg.frames[0], np.uint8).ctypes.data % 64 == 0
        del msg  # released: the next message may reuse its buffer
    assert pool.allocated == 2
    assert (kept == 1).all()  # never overwritten while referenced
    held = [roundtrip(20 + i) for i in range(3)]  # the free buffer, then new ones
    assert pool.allocated == 4
    assert [bytes(m.frames[0][:1]) for m in held] == [b"\x14", b"\x15", b"\x16"]
    assert (kept == 1).all()


def test_buffer_pool_arguments() -> None:
    with pytest.raises(ConfigError, match="max_buffers >= 1"):
        BufferPool(max_buffers=0)
    pool = BufferPool(min_bytes=1000)
    assert pool(10).nbytes == 1000
    assert pool(5000).nbytes == 5000


def test_sender_may_reuse_its_buffers_after_send(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    data = np.zeros(1000, np.int32)
    a.send(MsgType.DATA, {}, [data])
    data[:] = 7  # after send() returned, the message no longer depends on the array
    msg = b.recv(timeout=10)
    assert (np.frombuffer(msg.frames[0], np.int32) == 0).all()


def test_alloc_hook_must_return_a_big_writable_buffer(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    a.send(MsgType.DATA, {}, [b"abc"])
    with pytest.raises(ConfigError, match="writable"):
        b.recv(timeout=10, alloc=lambda n: bytes(n))
    assert b.closed


def test_unknown_message_type_is_passed_as_int(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    a.send(60000, {"x": 1})
    msg = b.recv(timeout=10)
    assert msg.type == 60000
    assert not isinstance(msg.type, MsgType)


def test_messages_in_order_both_directions(pair: tuple[Connection, Connection]) -> None:
    a, b = pair

    def send_all() -> None:  # ~1.2 MB: more than the sockets' buffers may hold, so not inline
        for i in range(50):
            a.send(MsgType.USER, {"i": i}, [bytes([i % 256]) * (i * 997)], timeout=30)
            b.send(MsgType.USER, {"i": -i}, timeout=30)

    runner = Runner(send_all)
    for i in range(50):
        msg = b.recv(timeout=10)
        assert msg.header == {"i": i}
        assert bytes(msg.frames[0]) == bytes([i % 256]) * (i * 997)
        assert a.recv(timeout=10).header == {"i": -i}
    runner.join()


def test_concurrent_senders_never_interleave(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    threads, per_thread = 4, 40

    def sender(t: int) -> None:
        for seq in range(per_thread):
            size = 1000 + (seq * 37_003 + t * 101) % 300_000
            a.send(MsgType.DATA, {"t": t, "seq": seq}, [bytes([t]) * size, bytes([seq]) * 10])

    runners = [Runner(lambda t=t: sender(t)) for t in range(threads)]
    next_seq = [0] * threads
    for _ in range(threads * per_thread):
        msg = b.recv(timeout=30)
        t, seq = msg.header["t"], msg.header["seq"]
        assert seq == next_seq[t]
        next_seq[t] += 1
        big = np.frombuffer(msg.frames[0], np.uint8)
        assert big.size == 1000 + (seq * 37_003 + t * 101) % 300_000
        assert (big == t).all()
        assert bytes(msg.frames[1]) == bytes([seq]) * 10
    for r in runners:
        r.join()
    assert next_seq == [per_thread] * threads


# -- timeouts and closing ------------------------------------------------------------------


def test_recv_timeout_then_success(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    with pytest.raises(PantheonTimeoutError, match=r"within 0\.05 s"):
        b.recv(timeout=0.05)
    assert not b.closed
    a.send(MsgType.PING, {"ok": True})
    assert b.recv(timeout=10).header == {"ok": True}


def test_timeout_in_the_middle_of_a_message_is_resumed(
    raw: tuple[socket.socket, Connection],
) -> None:
    sock, conn = raw
    body = bytes(range(256)) * 1024  # a large frame: read directly into its buffer
    data = message(MsgType.DATA, {"part": 1}, [b"small", body])
    for cut in (7, 40, 200_000):  # in the prefix, in the header, in the frames
        sock.sendall(data[:cut])
        with pytest.raises(PantheonTimeoutError):
            conn.recv(timeout=0.05)
        sock.sendall(data[cut:])
        msg = conn.recv(timeout=10)
        assert msg.header == {"part": 1}
        assert bytes(msg.frames[0]) == b"small"
        assert bytes(msg.frames[1]) == body


def test_small_message_split_and_resumed(raw: tuple[socket.socket, Connection]) -> None:
    sock, conn = raw
    data = message(MsgType.DATA, {"k": "v"}, [b"abc", b"defgh"])
    sock.sendall(data[:-3])
    with pytest.raises(PantheonTimeoutError, match="middle of a message"):
        conn.recv(timeout=0.05)
    sock.sendall(data[-3:] + data)
    for _ in range(2):
        assert [bytes(f) for f in conn.recv(timeout=10).frames] == [b"abc", b"defgh"]


def test_peer_close_raises_connection_lost(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    a.send(MsgType.PING)
    a.close()
    assert b.recv(timeout=10).type == MsgType.PING  # what was sent still arrives
    with pytest.raises(ConnectionLostError, match="closed the connection"):
        b.recv(timeout=10)
    assert b.closed


def test_send_to_closed_peer_fails(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    b.close()

    def send_until_it_fails() -> None:
        for _ in range(1000):  # TCP reports the reset after a send or two
            a.send(MsgType.DATA, {}, [b"x" * 65536])

    with pytest.raises(ConnectionLostError):
        send_until_it_fails()
    assert a.closed


def test_use_after_close(pair: tuple[Connection, Connection]) -> None:
    a, _ = pair
    a.close()
    a.close()  # idempotent
    with pytest.raises(ConnectionLostError, match="closed"):
        a.send(MsgType.PING)
    with pytest.raises(ConnectionLostError, match="closed"):
        a.recv(timeout=1)


def test_close_wakes_a_blocked_reader(pair: tuple[Connection, Connection]) -> None:
    _, b = pair
    started = threading.Event()

    def read() -> None:
        started.set()
        b.recv(timeout=None)

    runner = Runner(read)
    started.wait(10)
    b.close()
    with pytest.raises(ConnectionLostError):
        runner.join()


def test_send_timeout_when_peer_does_not_read() -> None:
    a, b = inproc_pair(capacity=1000)
    with pytest.raises(PantheonTimeoutError, match="not reading"):
        a.send(MsgType.DATA, {}, [b"x" * 5000], timeout=0.05)
    assert a.closed  # part of the message had left: the stream is unusable
    b.close()


def test_send_timeout_over_tcp(listener: Listener) -> None:
    a, b = tcp_pair(listener)
    with pytest.raises(PantheonTimeoutError):
        a.send(MsgType.DATA, {}, [np.zeros(64 * MIB, np.uint8)], timeout=0.2)
    assert a.closed
    b.close()


def test_a_send_to_a_slow_reader_times_out_per_stall_not_per_message(
    raw: tuple[socket.socket, Connection],
) -> None:
    """The timeout bounded the whole message: a big message to a peer reading it slowly,
    but reading, failed (and cut the connection) once the whole took longer than it."""
    sock, conn = raw
    size = 32 * MIB
    want = PREFIX_SIZE + 8 + size

    def read_slowly() -> int:  # 16 MB/s at most: the 32 MiB take over 2 s, in short pauses
        got = 0
        while got < want:
            chunk = sock.recv(1 << 20)
            assert chunk, "the sender closed the connection"
            got += len(chunk)
            time.sleep(len(chunk) / 16e6)
        return got

    reader = Runner(read_slowly)
    conn.send(MsgType.DATA, {}, [np.zeros(size, np.uint8)], timeout=1.0)
    assert reader.join(30) == want
    assert not conn.closed


def test_send_checks_own_caps_and_inputs(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    a.max_frames = 2
    with pytest.raises(ConfigError, match="max_frames: 3 > 2"):
        a.send(MsgType.DATA, {}, [b"", b"", b""])
    with pytest.raises(ConfigError, match="C-contiguous"):
        a.send(MsgType.DATA, {}, [np.zeros((4, 4))[:, 1]])
    with pytest.raises(ConfigError, match="msgpack-native"):
        a.send(MsgType.DATA, {"bad": {1, 2}})
    with pytest.raises(ConfigError, match="not a C-contiguous buffer"):
        a.send(MsgType.DATA, {}, [object()])  # type: ignore[list-item]
    assert not a.closed
    a.send(MsgType.PING)
    assert b.recv(timeout=10).type == MsgType.PING


# -- hostile input -------------------------------------------------------------------------

HOSTILE = {
    "garbage": (b"\x13\x37garbage that is not a message at all", "not a Pantheon message"),
    "wrong_magic": (prefix(magic=b"ABCD"), "expected magic"),
    "pickle": (pickle.dumps({"evil": [1, 2, 3]}), "pickle"),
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP"),
    "frame_format": (prefix(fmt=9), "frame format 9"),
    "too_many_frames": (prefix(nframes=10**6), "max_frames"),
    "huge_header": (prefix(hlen=2**31), "max_header_bytes"),
    "huge_frame": (prefix(nframes=1) + struct.pack("<Q", 100 * 10**9), "max_message_bytes"),
    "bad_header": (prefix(hlen=3) + b"\xc1\xc1\xc1", "malformed msgpack header"),
    "header_not_map": (prefix(hlen=4) + msgpack.packb([1, 2, 3]), "expected a msgpack map"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_rejected_and_listener_goes_on(listener: Listener, case: str) -> None:
    data, match = HOSTILE[case]
    host, port = parse_address(listener.address)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)  # and keep the socket open: no waiting for more bytes
        conn = listener.accept(timeout=10)
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match=match):
                conn.recv(timeout=10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * MIB  # rejected before allocating what the prefix claims
        assert conn.closed
    a, b = tcp_pair(listener)  # the listener still serves others
    a.send(MsgType.PING, {"after": case})
    assert b.recv(timeout=10).header == {"after": case}
    a.close()
    b.close()


def test_cap_errors_name_field_limit_and_value(raw: tuple[socket.socket, Connection]) -> None:
    sock, conn = raw
    sock.sendall(prefix(nframes=10**6))
    with pytest.raises(ProtocolError) as info:
        conn.recv(timeout=10)
    text = str(info.value)
    for part in ("max_frames", "1000000", "4096"):
        assert part in text


def test_huge_frame_error_names_the_frame(raw: tuple[socket.socket, Connection]) -> None:
    sock, conn = raw
    sock.sendall(prefix(nframes=2) + struct.pack("<2Q", 10, 100 * 10**9))
    with pytest.raises(ProtocolError, match=r"frame 1 alone claims 100000000000") as info:
        conn.recv(timeout=10)
    assert str(4 << 30) in str(info.value)


def test_caps_are_configurable(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    b.max_message_bytes = 1000
    a.send(MsgType.DATA, {}, [b"x" * 500])
    assert len(b.recv(timeout=10).frames[0]) == 500
    a.send(MsgType.DATA, {}, [b"x" * 2000])
    with pytest.raises(ProtocolError, match="max_message_bytes"):
        b.recv(timeout=10)
    assert b.closed


def test_header_cap(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    b.max_header_bytes = 100
    a.send(MsgType.DATA, {"x": "y" * 200})
    with pytest.raises(ProtocolError, match="max_header_bytes: its header length is 20"):
        b.recv(timeout=10)


@pytest.mark.parametrize("cut", [5, 16, 30, 100])
def test_truncated_message(raw: tuple[socket.socket, Connection], cut: int) -> None:
    sock, conn = raw
    data = message(MsgType.DATA, {"k": 1}, [b"z" * 200])
    sock.sendall(data[:cut])
    sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionLostError, match="truncated message"):
        conn.recv(timeout=10)


def test_truncated_large_frame(raw: tuple[socket.socket, Connection]) -> None:
    sock, conn = raw
    data = message(MsgType.DATA, {}, [b"z" * 300_000])
    sock.sendall(data[:250_000])
    sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionLostError, match="truncated message"):
        conn.recv(timeout=10)


def test_inproc_rejects_garbage_too() -> None:
    a, b = inproc_pair()
    a.send_raw(b"PNTX" + bytes(12))
    with pytest.raises(ProtocolError, match="expected magic"):
        b.recv(timeout=10)
    a.close()


# -- addresses, listening, connecting ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("tcp://teacher-0:80", ("teacher-0", 80)),
        ("[::1]:7", ("::1", 7)),
        (" localhost:0 ", ("localhost", 0)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "host", "host:", ":80", "host:http", "h:70000", "::1:80", "tcp://"]
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        parse_address(text)
    with pytest.raises(ConfigError):
        connect(text, timeout=1)


def test_listener_address_has_the_real_port(listener: Listener) -> None:
    host, port = parse_address(listener.address)
    assert host == "127.0.0.1"
    assert port > 0
    a, b = tcp_pair(listener)
    assert a.peer == listener.address
    assert b.peer == a.local
    assert "open" in repr(a)
    a.close()
    b.close()


def test_accept_timeout_and_close(listener: Listener) -> None:
    with pytest.raises(PantheonTimeoutError, match="no connection"):
        listener.accept(timeout=0.05)
    started = threading.Event()

    def wait() -> None:
        started.set()
        listener.accept(timeout=None)

    runner = Runner(wait)
    started.wait(10)
    listener.close()
    with pytest.raises(ClosedError):
        runner.join()
    assert listener.closed


def test_listen_on_a_used_port(listener: Listener) -> None:
    host, port = parse_address(listener.address)
    with pytest.raises(ConfigError, match="cannot listen"):
        listen(host, port)


def test_connect_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(ConnectionLostError, match="cannot connect"):
            connect(f"127.0.0.1:{port}", timeout=0.3)
        with pytest.raises(ConnectionLostError):
            connect(f"127.0.0.1:{port}", timeout=5, retry=False)


def test_connect_waits_for_a_late_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        runner = Runner(lambda: connect(f"tcp://127.0.0.1:{port}", timeout=30))
        s.listen()  # starts listening after the first attempts were refused
        conn = runner.join()
        peer, _ = s.accept()
        with peer:
            peer.sendall(message(MsgType.PONG, {"late": True}, []))
            assert conn.recv(timeout=10).header == {"late": True}
        conn.close()


def test_stream_connection_is_the_shared_base() -> None:
    a, b = inproc_pair()
    assert isinstance(a, StreamConnection)
    with a, b:
        pass
    assert a.closed
    assert b.closed


def test_message_type_values_are_stable() -> None:
    assert {t.name: int(t) for t in MsgType} == {
        "HELLO": 1,
        "CHALLENGE": 2,
        "AUTH": 3,
        "AUTH_OK": 4,
        "AUTH_FAIL": 5,
        "DESC": 16,
        "SUBSCRIBE": 17,
        "CREDIT": 18,
        "END_ROUND": 19,
        "ROUND_DONE": 20,
        "STATUS": 21,
        "STATUS_INFO": 22,
        "SHM_READY": 23,
        "SHM_FREE": 24,
        "DATA": 32,
        "QUERY": 33,
        "ANSWER": 34,
        "USER": 35,
        "PING": 48,
        "PONG": 49,
        "BYE": 50,
        "ERROR": 51,
    }


def test_buffer_pool_never_recycles_a_buffer_still_viewed():
    from pantheon._wire import BufferPool

    pool = BufferPool(max_buffers=4, min_bytes=0)
    first = pool(4096)
    numpy_slice = first[100:200]  # numpy views refer to the allocation, not to `first`
    framed = np.frombuffer(memoryview(first)[0:64], dtype=np.uint8)[8:16]
    del first
    others = [pool(4096) for _ in range(3)]
    assert not any(np.shares_memory(o, numpy_slice) for o in others)
    assert not any(np.shares_memory(o, framed) for o in others)
    del numpy_slice, framed, others
    again = pool(4096)
    assert pool.allocated == 4
    assert again.nbytes >= 4096


def _sndbuf(conn: Connection) -> int:
    sock = conn._stream._sock  # type: ignore[attr-defined]
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def test_both_ends_on_this_host_bound_their_send_buffers(listener: Listener) -> None:
    """The kernel doubles SO_SNDBUF (Linux): the connection asks for LOOPBACK_SNDBUF."""
    a, b = tcp_pair(listener)
    try:
        for conn in (a, b):
            assert wire_tcp.LOOPBACK_SNDBUF <= _sndbuf(conn) <= 2 * wire_tcp.LOOPBACK_SNDBUF
        data = np.arange(8 * MIB, dtype=np.uint8)  # more than the buffer: partial sends
        runner = Runner(lambda: a.send(MsgType.DATA, {}, [data], timeout=30))
        msg = b.recv(timeout=30)
        runner.join()
        assert np.array_equal(np.frombuffer(msg.frames[0], np.uint8), data)
    finally:
        a.close()
        b.close()


def _same_host(sock: socket.socket) -> bool:
    return wire_tcp.same_host(
        wire_tcp._sockname(sock, peer=True), wire_tcp._sockname(sock, peer=False)
    )


def test_only_a_peer_on_this_host_counts_as_this_host() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as local:
        local.connect(("127.0.0.1", 9))  # a datagram socket's connect sends nothing
        assert _same_host(local)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        try:
            other.connect(("192.0.2.1", 9))  # TEST-NET-1: never this host
        except OSError:
            pytest.skip("no route to another host here")
        assert not _same_host(other)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unconnected:
        assert not _same_host(unconnected)
