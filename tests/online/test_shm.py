"""The same-host transport end to end: real teacher and student processes, knowledge through
a shared-memory ring, SIGKILL of either side, held arrays, TCP fallback, authentication."""

from __future__ import annotations

import gc
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pantheon import AuthenticationError, ConfigError, Student, Teacher
from pantheon._wire import Ring, client_handshake, connect, shm_unavailable
from tests.helpers import TESTS, Runner, wait_for

pytestmark = pytest.mark.skipif(shm_unavailable() is not None, reason=str(shm_unavailable()))


def dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def ring_maps() -> int:
    """Mappings of rings in this process (a student's own ring, a teacher's mapping of one)."""
    with open("/proc/self/maps") as f:
        return sum("memfd:pantheon-ring" in line for line in f)


def reader(samples: int = 600, batch: int = 20) -> Any:
    def batches() -> Any:
        for start in range(0, samples, batch):
            x = np.arange(start, min(start + batch, samples), dtype=np.int64).reshape(-1, 1)
            yield {"x": x, "y": np.repeat(x.astype(np.float32), 300, axis=1)}

    return batches


def test_held_arrays_stay_valid_and_messages_fall_back_when_every_slot_is_held(teacher_proc):
    """A training loop that keeps every batch: the first messages fill the ring's slots, the
    rest come over TCP, and every array held stays what it was."""
    before = dev_shm()
    proc = teacher_proc("--samples", "3000", "--batch", "10", "--width", "64")
    kept = []
    with Student(timeout=60, transport="shm", credits=4) as student:
        student.register_teacher(in_address=proc.address())
        student.start()
        for batch in student.get_knowledge_generator(batch_size=10)():
            kept.append(batch)
        stats = student.stats()
    assert list(stats["transport"].values()) == ["shm"]
    assert 0 < stats["shm_messages"] < stats["batches"]  # slots ran out: the rest over TCP
    for i, batch in enumerate(kept):
        x = np.arange(10 * i, 10 * i + 10)
        np.testing.assert_array_equal(batch["x"].ravel(), x)
        np.testing.assert_array_equal(batch["feat"], np.repeat(x[:, None], 64, 1))
    assert proc.finish() == 0
    del kept, batch
    gc.collect()
    assert ring_maps() == 0 and dev_shm() == before


def test_a_teacher_killed_mid_round_over_shared_memory_resumes_exactly(teacher_proc):
    before = dev_shm()
    first = teacher_proc("--samples", "2000", "--batch", "10", "--delay", "0.002")
    address = first.address()
    port = address.rsplit(":", 1)[1]
    seen = []
    with Student(timeout=60, transport="shm") as student:
        student.register_teacher(in_address=address)
        student.start()
        restarted = None
        for i, batch in enumerate(student.get_knowledge_generator(batch_size=64)()):
            seen.append(batch["x"].ravel().copy())
            if i == 5:
                first.kill(signal.SIGKILL)
                first.finish()
                restarted = teacher_proc("--port", port, "--samples", "2000", "--batch", "10")
                restarted.address()
        stats = student.stats()
        del batch  # the last batch is a view of the ring
    assert np.array_equal(np.concatenate(seen), np.arange(2000)), "every sample exactly once"
    assert stats["reconnects"] >= 1 and stats["shm_messages"] > 0
    assert restarted is not None and restarted.finish() == 0
    gc.collect()
    assert ring_maps() == 0 and dev_shm() == before


def _student(spawn: Any, address: str, checkpoint: Path, *flags: str) -> Any:
    args = [str(TESTS / "student_proc.py"), "--address", address, "--checkpoint", str(checkpoint)]
    return spawn([*args, "--transport", "shm", *flags])


def test_a_student_killed_leaves_no_mapping_and_its_successor_resumes(spawn, tmp_path):
    before = dev_shm()
    checkpoint = tmp_path / "student.json"
    with Teacher(out_port=0, timeout=60) as teacher:
        runner = Runner(lambda: teacher.serve(reader()))
        first = _student(spawn, teacher.address, checkpoint, "--batch", "16", "--delay", "0.01")
        first.wait_line("STEP 3")
        assert ring_maps() == 1  # this teacher maps the student's ring
        first.kill(signal.SIGKILL)
        first.finish()
        assert wait_for(lambda: ring_maps() == 0), "the teacher unmaps a dead student's ring"
        second = _student(spawn, teacher.address, checkpoint, "--batch", "16")
        assert second.wait_line("TRANSPORT").split()[1] == "shm"
        second.wait_line("DONE")
        assert second.finish() == 0
        runner.join(60)
    assert json.loads(checkpoint.read_text())["seen"] == [list(range(600))]
    assert ring_maps() == 0 and dev_shm() == before


def test_without_shared_memory_on_the_teacher_auto_falls_back_and_shm_says_why(teacher_proc):
    proc = teacher_proc("--samples", "200", env={"PANTHEON_SHM": "0"})
    address = proc.address()
    with Student(timeout=30, transport="shm") as student:
        student.register_teacher(in_address=address)
        with pytest.raises(ConfigError, match=r"transport='shm'.*PANTHEON_SHM=0"):
            student.start()
    with Student(timeout=30) as student:  # transport="auto"
        student.register_teacher(in_address=address)
        student.start()
        xs = np.concatenate([b["x"].ravel() for b in student.get_knowledge_generator(32)()])
        stats = student.stats()
        assert np.array_equal(xs, np.arange(200))
        assert list(stats["transport"].values()) == ["tcp"] and stats["shm_messages"] == 0
    assert proc.finish() == 0


def test_tcp_forced_never_offers_a_ring():
    with Teacher(out_port=0, timeout=30) as teacher:
        runner = Runner(lambda: teacher.serve(reader(100)))
        with Student(timeout=30, transport="tcp") as student:
            student.register_teacher(in_address=teacher.address)
            student.start()
            assert ring_maps() == 0
            assert sum(len(b["x"]) for b in student.get_knowledge_generator(25)()) == 100
            assert student.stats()["shm_messages"] == 0
        runner.join(30)
    with pytest.raises(ConfigError, match="transport"):
        Student(transport="udp")


def test_a_ring_is_never_mapped_before_the_student_authenticated(monkeypatch):
    """A client that offers its ring with the wrong token is refused before the teacher
    looks at the offer; with the right token the same offer is mapped (the check can fail)."""
    monkeypatch.delenv("PANTHEON_TOKEN", raising=False)
    with Teacher(out_port=0, timeout=30, token="right") as teacher:
        for token, mapped in ((b"wrong", False), (b"right", True)):
            ring = Ring(slots=2, slot_bytes=64 * 1024)
            hello = {"role": "student", "client": token.decode(), "shm": ring.offer()}
            with connect(teacher.address, timeout=10) as conn:
                if not mapped:
                    with pytest.raises(AuthenticationError):
                        client_handshake(conn, token, timeout=10, hello=hello)
                    assert ring_maps() == 1  # only this side's own mapping
                else:
                    client_handshake(conn, token, timeout=10, hello=hello)
                    assert wait_for(lambda: ring_maps() == 2)  # the teacher mapped it
            ring.close()


def test_a_teacher_on_another_host_is_not_offered_a_ring():
    """``auto`` offers a ring only to a teacher whose address is this host's."""
    from pantheon._wire import is_local

    class Conn:
        peer = "10.1.2.3:5000"
        local = "10.9.9.9:40000"

    assert not is_local(Conn())  # type: ignore[arg-type]
    Conn.local = "10.1.2.3:40000"
    assert is_local(Conn())  # type: ignore[arg-type]
    Conn.peer = "[::1]:5000"
    assert is_local(Conn())  # type: ignore[arg-type]
