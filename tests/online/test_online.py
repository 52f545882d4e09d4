"""Online teachers in real processes over real sockets on 127.0.0.1."""

from __future__ import annotations

import gc
import logging
import pickle
import signal
import socket
import threading
import weakref

import numpy as np
import pytest

from pantheon import (
    AuthenticationError,
    ConfigError,
    PantheonError,
    Student,
    Teacher,
    TeacherError,
)


def _read_round(student: Student, batch_size: int = 32) -> np.ndarray:
    gen = student.get_knowledge_generator(batch_size=batch_size)
    return np.concatenate([b["x"].ravel() for b in gen()])


def test_stream_two_rounds_with_send_recv_in_threads():
    teacher = Teacher(out_port=0, timeout=30)
    result = {}

    def serve():
        teacher.start(timeout=30)
        teacher.send({"n": 1, "arr": np.arange(4, dtype=np.float32), "t": (1, "a")})
        result["got"] = teacher.recv(timeout=30)
        teacher.serve(
            lambda: ({"x": np.arange(i, i + 7).reshape(-1, 1)} for i in range(0, 70, 7)), times=2
        )
        result["done"] = True

    thread = threading.Thread(target=serve)
    thread.start()
    with Student(timeout=30) as student:
        student.register_teacher(in_address=teacher.address)
        student.start()
        msg = student.recv(0)
        assert msg["n"] == 1 and msg["t"] == (1, "a")
        assert np.array_equal(msg["arr"], np.arange(4, dtype=np.float32))
        student.send(b"bytes from the student")
        assert student.get_knowledge_desc() == {
            "x": {"shape": [-1, 1], "dtype": "int64", "lod_level": 0}
        }
        for _ in range(2):
            assert np.array_equal(_read_round(student), np.arange(70))
    thread.join(30)
    assert result == {"got": b"bytes from the student", "done": True}
    teacher.close()


def test_a_user_message_too_big_for_its_header_is_refused_at_once_on_both_sides():
    """Over the header's 1 MiB cap nothing was sent, but the student took it for a lost
    connection: it reconnected and sent it again, hundreds of times a second, and ended with
    "is not connected"; the teacher closed its student instead. Both now raise at once."""
    with Teacher(out_port=0, timeout=30) as teacher, Student(timeout=30) as student:
        student.register_teacher(in_address=teacher.address)
        student.start()
        teacher.start(timeout=30)
        with pytest.raises(ConfigError, match=r"at most \d+ bytes outside numpy arrays"):
            student.send(b"x" * (2 << 20))
        with pytest.raises(ConfigError, match=r"np\.frombuffer"):
            teacher.send({"blob": b"x" * (2 << 20)})
        blob = np.frombuffer(b"x" * (2 << 20), np.uint8)  # as an array it goes
        student.send({"blob": blob})
        assert np.array_equal(teacher.recv(timeout=30)["blob"], blob)
        teacher.send("still connected")
        assert student.recv(0, timeout=30) == "still connected"
        assert student.stats()["reconnects"] == 0


def test_abandoned_generator_is_continued_without_loss(teacher_proc):
    proc = teacher_proc("--samples", "500", "--batch", "16", "--times", "1")
    with Student(timeout=30) as student:
        student.register_teacher(in_address=proc.address())
        student.start()
        gen = student.get_knowledge_generator(batch_size=50)
        seen = []
        for i, batch in enumerate(gen()):
            seen.append(batch["x"].ravel())
            if i == 3:
                break
        assert student.state_dict()["sample_in_round"] == 200
        seen.extend(b["x"].ravel() for b in student.get_knowledge_generator(batch_size=50)())
        assert np.array_equal(np.concatenate(seen), np.arange(500))
    assert proc.finish() == 0


def test_teacher_killed_mid_round_and_restarted_resumes_exactly(teacher_proc):
    first = teacher_proc("--samples", "2000", "--batch", "10", "--delay", "0.002")
    address = first.address()
    port = address.rsplit(":", 1)[1]
    with Student(timeout=60, transport="tcp") as student:  # shared memory: tests/online/test_shm
        student.register_teacher(in_address=address)
        student.start()
        gen = student.get_knowledge_generator(batch_size=64)
        seen = []
        restarted = None
        for i, batch in enumerate(gen()):
            seen.append(batch["x"].ravel())
            assert np.array_equal(batch["feat"].ravel(), batch["x"].ravel().astype(np.float32))
            if i == 5:
                first.kill(signal.SIGKILL)
                first.finish()
                restarted = teacher_proc("--port", port, "--samples", "2000", "--batch", "10")
                restarted.address()
        xs = np.concatenate(seen)
        assert np.array_equal(xs, np.arange(2000)), "every sample exactly once, in order"
        assert student.stats()["reconnects"] >= 1
    assert restarted is not None and restarted.finish() == 0


def test_student_restart_resumes_from_state_dict(teacher_proc):
    proc = teacher_proc("--samples", "300", "--batch", "7")
    address = proc.address()
    seen = []
    student = Student(timeout=30)
    student.register_teacher(in_address=address)
    student.start()
    for i, batch in enumerate(student.get_knowledge_generator(batch_size=20)()):
        seen.append(batch["x"].ravel())
        if i == 4:
            state = student.state_dict()
            break
    student.close(resume=True)  # the teacher waits for it to come back
    with Student(timeout=30) as student:
        student.register_teacher(in_address=address)
        student.load_state_dict(state)
        student.start()
        seen.extend(b["x"].ravel() for b in student.get_knowledge_generator(batch_size=20)())
    assert np.array_equal(np.concatenate(seen), np.arange(300))
    assert proc.finish() == 0


def test_teachers_may_start_after_the_student(teacher_proc):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    student = Student(timeout=30)
    student.register_teacher(in_address=address)
    starter = threading.Thread(target=student.start)
    starter.start()
    proc = teacher_proc("--port", str(port), "--samples", "100")
    proc.address()
    starter.join(30)
    assert np.array_equal(_read_round(student), np.arange(100))
    student.close()
    assert proc.finish() == 0


def test_wrong_token_is_refused_and_logged(teacher_proc, caplog):
    proc = teacher_proc("--token", "right-secret", "--samples", "50")
    address = proc.address()
    bad = Student(timeout=5, token="wrong-secret")
    bad.register_teacher(in_address=address)
    with pytest.raises(AuthenticationError, match="token"):
        bad.start()
    bad.close()
    with Student(timeout=30, token="right-secret") as good:
        good.register_teacher(in_address=address)
        good.start()
        assert np.array_equal(_read_round(good), np.arange(50))
    assert proc.finish() == 0
    assert "refused" in proc.stderr()


def test_garbage_and_pickles_do_not_stop_the_teacher(teacher_proc):
    proc = teacher_proc("--samples", "60")
    host, port = proc.address().rsplit(":", 1)
    payloads = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        pickle.dumps({"x": np.arange(3)}),
        b"\x00" * 64,
        b"PNTH" + b"\xff" * 60,
    ]
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(10)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    with Student(timeout=30) as student:
        student.register_teacher(in_address=proc.address())
        student.start()
        assert np.array_equal(_read_round(student), np.arange(60))
    assert proc.finish() == 0


def test_frozen_teacher_is_detected_and_named(teacher_proc):
    proc = teacher_proc(
        "--samples", "100000", "--batch", "10", "--delay", "0.001", "--heartbeat", "2"
    )
    student = Student(timeout=4, heartbeat_interval=0.4, heartbeat_timeout=2.0)
    student.register_teacher(in_address=proc.address())
    student.start()
    gen = student.get_knowledge_generator(batch_size=10)
    with pytest.raises(TeacherError, match=r"teacher 0 .* gone"):
        for i, _ in enumerate(gen()):
            if i == 3:
                proc.kill(signal.SIGSTOP)
    student.close()


def test_non_loopback_bind_without_token_is_refused(monkeypatch):
    monkeypatch.delenv("PANTHEON_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="PANTHEON_TOKEN"):
        Teacher(out_port=0, host="0.0.0.0")


def test_hybrid_online_and_offline_teachers(tmp_path, teacher_proc):
    path = tmp_path / "t.arrow"
    with Teacher(out_path=path) as offline:
        for start in range(0, 200, 33):
            x = np.arange(start, min(start + 33, 200)).reshape(-1, 1)
            offline.dump({"x": x, "feat": x.astype(np.float32) * 0 + 100})
    proc = teacher_proc("--samples", "200", "--batch", "8", "--times", "2")
    with Student(merge_strategy={"x": "max", "feat": "sum"}, timeout=30) as student:
        student.register_teacher(in_address=proc.address())
        student.register_teacher(in_path=path)
        student.start()
        for _ in range(2):
            batches = list(student.get_knowledge_generator(batch_size=32)())
            xs = np.concatenate([b["x"].ravel() for b in batches])
            feat = np.concatenate([b["feat"].ravel() for b in batches])
            assert np.array_equal(xs, np.arange(200))
            assert np.array_equal(feat, np.arange(200) + 100)
    assert proc.finish() == 0


def test_query_mode_spreads_over_replicas_and_fails_over(teacher_proc):
    a = teacher_proc("--mode", "query", "--offset", "0")
    b = teacher_proc("--mode", "query", "--offset", "0", "--delay", "0.001")
    queries = [{"x": np.arange(i, i + 25).reshape(-1, 1)} for i in range(0, 1000, 25)]
    with Student(timeout=30) as student:
        student.register_teacher(in_address=[a.address(), b.address()])
        student.start()
        out = []
        for i, batch in enumerate(
            student.get_knowledge_generator(batch_size=25, queries=queries)()
        ):
            assert set(batch) == {"x", "feat"}
            assert np.array_equal(batch["feat"].ravel(), batch["x"].ravel().astype(np.float32))
            out.append(batch["x"].ravel())
            if i == 10:
                a.kill(signal.SIGKILL)
        assert np.array_equal(np.concatenate(out), np.arange(1000))


def test_errors_are_pantheon_errors():
    assert issubclass(TeacherError, PantheonError)
    logging.getLogger("pantheon").debug("ok")


@pytest.mark.parametrize("window_bytes", [None, 2 << 20])
def test_slow_student_slows_the_teacher_memory_stays_bounded(window_bytes):
    produced = [0]
    block = np.ones((256, 1000), np.float32)  # 1 MiB per batch

    def reader():
        for i in range(200):
            produced[0] += 1
            yield {"x": np.full((256, 1), i, np.int64), "logits": block}

    teacher = Teacher(out_port=0, timeout=60, prefetch_batches=4)
    thread = threading.Thread(target=lambda: (teacher.start(timeout=60), teacher.serve(reader)))
    thread.start()
    lead = []
    with Student(timeout=60, read_ahead=4, window_bytes=window_bytes) as student:
        student.register_teacher(in_address=teacher.address)
        student.start()
        for consumed, batch in enumerate(student.get_knowledge_generator(256)(), start=1):
            assert batch["x"][0, 0] == consumed - 1
            if consumed % 20 == 0:
                threading.Event().wait(0.2)  # a slow training step: the teacher catches up
                lead.append(produced[0] - consumed)
    thread.join(30)
    teacher.close()
    # in flight at most: the producer's window 4 and a group read ahead together (messages
    # join batches up to coalesce_bytes, 4 MiB: 5 batches of 1,026,048 bytes), then 16 credits
    # of such messages, or with a byte window what fits in it and one batch more, the
    # student's read-ahead 4, and a few being handed over
    per_message = 1 + (4 * 1024 * 1024) // block.nbytes
    batch_bytes = block.nbytes + 256 * 8
    in_flight = 16 * per_message if window_bytes is None else window_bytes // batch_bytes + 1
    assert max(lead) <= 4 + per_message + in_flight + 4 + 4, lead
    assert teacher.stats()["backpressure_seconds"] > 0


def _big_batch(start: int) -> dict[str, np.ndarray]:
    """10 samples and 1 MB: a student cannot hold a whole round of these in its buffers."""
    return {
        "x": np.arange(start, start + 10).reshape(-1, 1),
        "pad": np.zeros((10, 25000), np.float32),
    }


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_large_batches_ready_together_travel_as_one_message(transport):
    """Large batches of a reader that keeps up are read ahead and sent together as one
    message, frames gathered from the batches' arrays (no copy): fewer messages than
    batches, every sample once and unchanged, the student's batches those of the reader."""
    n = 120
    blocks = [np.full((64, 1024), i, np.float32) for i in range(n)]  # 256 KiB each

    def reader():
        for i, b in enumerate(blocks):
            yield {"x": np.arange(64 * i, 64 * (i + 1)).reshape(64, 1), "logits": b}

    teacher = Teacher(out_port=0, timeout=60)
    thread = threading.Thread(target=lambda: (teacher.start(timeout=60), teacher.serve(reader)))
    thread.start()
    with Student(timeout=60, transport=transport) as student:
        student.register_teacher(in_address=teacher.address)
        student.start()
        got = [
            (b["x"].ravel().copy(), float(b["logits"][0, 0]), b["logits"].shape)
            for b in student.get_knowledge_generator(64)()
        ]
    thread.join(30)
    stats = teacher.stats()
    teacher.close()
    assert [g[0].tolist() for g in got] == [list(range(64 * i, 64 * (i + 1))) for i in range(n)]
    assert [g[1] for g in got] == [float(i) for i in range(n)]
    assert all(g[2] == (64, 1024) for g in got)
    assert stats["batches"] == n
    assert stats["messages"] < n, stats  # read ahead while the reader kept up: joined


def test_a_student_that_retried_its_connection_is_freed_when_dropped():
    """A student whose first connection attempts were refused (its teacher started later) is
    freed as soon as the program drops it, without the cyclic garbage collector: the failed
    attempts leave no exception whose traceback holds the frames that hold the student. The
    seed's student reads one round per run and is dropped at exit; freed, it tells its
    teacher it may come back, and the teacher waits for it instead of ending its rounds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listening = threading.Event()

    def reader():
        for i in range(5):
            yield {"x": np.arange(4 * i, 4 * i + 4).reshape(4, 1)}

    teachers = []

    def serve():
        listening.wait(30)
        teachers.append(Teacher(out_port=port, timeout=60))  # listens from now on
        teachers[0].start(timeout=60)
        teachers[0].serve(reader, times=1)

    thread = threading.Thread(target=serve)
    thread.start()

    def read_one_round() -> tuple[weakref.ref[Student], int]:
        student = Student(timeout=60)
        student.register_teacher(in_address=f"127.0.0.1:{port}")
        threading.Timer(0.3, listening.set).start()  # refused until then
        student.start()
        samples = sum(len(b["x"]) for b in student.get_knowledge_generator(4)())
        return weakref.ref(student), samples

    gc.disable()
    try:
        ref, samples = read_one_round()
        assert samples == 20
        assert ref() is None  # freed at once (refcount), not left to the cyclic collector
    finally:
        gc.enable()
    thread.join(30)
    teachers[0].close()


def test_a_new_student_replaces_the_previous_one():
    teacher = Teacher(out_port=0, timeout=60)
    thread = threading.Thread(
        target=lambda: (
            teacher.start(timeout=60),
            teacher.serve(lambda: (_big_batch(i) for i in range(0, 3000, 10))),
        )
    )
    thread.start()
    first = Student(timeout=30)
    first.register_teacher(in_address=teacher.address)
    first.start()
    it = first.get_knowledge_generator(batch_size=10)()
    next(it)
    with Student(timeout=30) as second:
        second.register_teacher(in_address=teacher.address)
        second.start()
        with pytest.raises(TeacherError, match="replaced by a newer student"):
            for _ in it:
                pass
        xs = np.concatenate([b["x"].ravel() for b in second.get_knowledge_generator(100)()])
        assert np.array_equal(xs, np.arange(3000))
    first.close()
    thread.join(30)
    assert not thread.is_alive()
    teacher.close()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (0, "window_bytes must be a positive integer"),
        (1.5, "window_bytes must be a positive integer"),
        ("16M", "window_bytes must be a positive integer"),
        (1 << 41, r"window_bytes must be at most 1099511627776 \(1 TiB\)"),
    ],
)
def test_a_bad_byte_window_is_refused_with_what_was_expected(bad, match):
    with pytest.raises(ConfigError, match=match):
        Student(window_bytes=bad)
