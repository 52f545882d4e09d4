"""Teacher pools on a local Ray instance: fail-over through SIGKILL, scale-up, split rounds."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from pantheon import ConfigError, Student
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
                yield q

        with Student(timeout=60) as student:
            student.register_teacher(in_address="ray://grow")
            gen = student.get_knowledge_generator(batch_size=8, queries=queries())
            batches = list(gen())
        pids = _check_answers(batches, 250)
        added = set(pool.pids()) - set(first)
        assert len(pool.addresses()) == 2 and len(added) == 1
        assert added <= set(pids[40 * 8 :])  # the new replica answered queries
        pool.scale(1)
        assert len(pool.addresses()) == 1
        with pytest.raises(ConfigError):
            TeacherPool("grow", services.queries)  # the name is taken


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
