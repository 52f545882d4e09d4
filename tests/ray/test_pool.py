"""Teacher pools on a local Ray instance: fail-over through SIGKILL, scale-up, split rounds."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from pantheon import ConfigError, Student, TeacherError
from tests.ray import services

pytestmark = pytest.mark.ray
ray_mod = pytest.importorskip("pantheon.ray")
TeacherPool = ray_mod.TeacherPool


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _query_batches(n: int, size: int = 8):
    for i in range(n):
        yield {"x": np.arange(i * size, (i + 1) * size, dtype=np.int64).reshape(-1, 1)}


def _check_answers(batches, n: int, size: int = 8) -> np.ndarray:
    x = np.concatenate([b["x"] for b in batches])
    y = np.concatenate([b["y"] for b in batches])
    assert x[:, 0].tolist() == list(range(n * size))  # every query once, in order
    assert np.array_equal(y, 2 * x)
    return np.concatenate([b["pid"] for b in batches])[:, 0]


def test_a_killed_replica_is_restarted_and_used_again(ray_cluster):
    with TeacherPool("kill", services.queries, replicas=2, num_cpus=0.5) as pool:
        before = pool.pids()
        restarted = {}

        student = Student(timeout=60)

        def queries():
            for i, q in enumerate(_query_batches(300)):
                if i == 60:
                    os.kill(before[1], signal.SIGKILL)
                if i == 120:  # go on once Ray brought the replica back and the student is in
                    _wait(lambda: pool.starts()[1] == 2, 60, "replica 1 to restart")
                    restarted["pid"] = pool.pids()[1]
                    assert pool.members().address(1) is not None
                    _wait(lambda: student.stats()["reconnects"] >= 1, 60, "a reconnection")
                yield q

        with student:
            student.register_teacher(in_address="ray://kill")
            student.start()
            gen = student.get_knowledge_generator(batch_size=8, queries=queries())
            batches = list(gen())
            stats = student.stats()
        pids = _check_answers(batches, 300)
        assert restarted["pid"] != before[1]
        assert set(pids[: 60 * 8]) <= set(before)
        assert restarted["pid"] in set(pids[120 * 8 :])  # the student used it again
        assert stats["reconnects"] >= 1


def test_scale_up_while_a_student_streams(ray_cluster):
    with TeacherPool("grow", services.queries, replicas=1, num_cpus=0.5) as pool:
        first = pool.pids()

        def queries():
            for i, q in enumerate(_query_batches(250)):
                if i == 40:
                    pool.scale(2)  # waits until the new replica serves
                if i == 41:  # the student connects to the new replica by itself
                    _wait(lambda: len(student.stats()["transport"]) == 2, 60, "a second link")
                if i == 160:
                    pool.scale(1)  # its queries in flight go to the replica left
                yield q

        student = Student(timeout=60)

        with student:
            student.register_teacher(in_address="ray://grow")
            gen = student.get_knowledge_generator(batch_size=8, queries=queries())
            batches = list(gen())
        pids = _check_answers(batches, 250)  # through the scale-up and the scale-down
        assert len(set(pids[41 * 8 : 160 * 8])) == 2  # the new replica answered queries
        assert pool.pids() == first and len(pool.addresses()) == 1
        with pytest.raises(ConfigError, match="exists"):
            TeacherPool("grow", services.queries)  # the name is taken


def test_a_replica_that_cannot_start_is_an_error_naming_it(ray_cluster):
    with pytest.raises(TeacherError, match="service\\(\\) must return"):
        TeacherPool("broken", services.broken, num_cpus=0.5, timeout=60)
    with pytest.raises(ConfigError, match="no pool named 'broken'"):
        TeacherPool.get("broken")  # nothing left behind


def test_a_same_order_pool_splits_the_round_and_gives_it_in_order(ray_cluster):
    with TeacherPool("split", services.rounds, replicas=2, num_cpus=0.5) as pool:
        with Student(timeout=60) as student:
            student.register_teacher(in_address="ray://split")
            gen = student.get_knowledge_generator(batch_size=32)
            batches = list(gen())
            half = list(gen())[:10]  # the second round, left after 10 batches
        x = np.concatenate([b["x"] for b in batches])[:, 0]
        assert x.tolist() == list(range(services.SAMPLES))
        assert [len(b["x"]) for b in batches] == [32] * 31 + [8]
        y = np.concatenate([b["y"] for b in batches])[:, 0]
        assert np.array_equal(y, 2 * x)
        pids = np.concatenate([b["pid"] for b in batches])[:, 0]
        block = services.READER_BATCH  # block k was predicted by replica k % 2
        owner = {p: i for i, p in enumerate(pool.pids())}
        assert [owner[p] for p in pids[::block]] == [k % 2 for k in range(len(pids[::block]))]
        assert np.concatenate([b["x"] for b in half])[:, 0].tolist() == list(range(320))


def test_ranks_of_a_group_get_their_shards_of_a_split_round(ray_cluster):
    import threading

    out: dict[int, list[int]] = {}

    def rank(r: int) -> None:
        with Student(timeout=60, group="g", rank=r, world_size=2) as student:
            student.register_teacher(in_address="ray://ranks")
            gen = student.get_knowledge_generator(batch_size=20)
            out[r] = np.concatenate([b["x"] for b in gen()])[:, 0].tolist()

    with TeacherPool("ranks", services.rounds, replicas=2, num_cpus=0.5):
        threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    assert out[0] == list(range(0, services.SAMPLES, 2))
    assert out[1] == list(range(1, services.SAMPLES, 2))


def test_a_same_order_replica_killed_mid_round_resumes_its_part(ray_cluster):
    options = {"coalesce_bytes": 1, "prefetch_batches": 2}  # a message per block, few ahead
    with TeacherPool(
        "split-kill", services.rounds, replicas=2, num_cpus=0.5, teacher_options=options
    ) as pool:
        before = pool.pids()
        batches = []
        with Student(timeout=60, read_ahead=2, credits=2) as student:
            student.register_teacher(in_address="ray://split-kill")
            for batch in student.get_knowledge_generator(batch_size=16)():
                batches.append(batch)
                if len(batches) == 2:
                    os.kill(before[1], signal.SIGKILL)
        x = np.concatenate([b["x"] for b in batches])[:, 0]
        assert x.tolist() == list(range(services.SAMPLES))  # every sample once, in order
        assert np.array_equal(np.concatenate([b["y"] for b in batches])[:, 0], 2 * x)
        assert pool.starts()[1] == 2
        last = len(batches) - 1  # a batch is a block here: block k is replica k % 2's
        last_of_replica_1 = batches[last - 1 if last % 2 == 0 else last]
        assert int(last_of_replica_1["pid"][0, 0]) == pool.pids()[1] != before[1]
