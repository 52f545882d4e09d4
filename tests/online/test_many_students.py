"""One teacher, many students: ranks of a group, fan-out to groups, queries, the cache.

Real sockets on 127.0.0.1; students run as separate processes where one is killed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pantheon import Student, Teacher, TeacherError
from pantheon._online.queries import QueryBatcher
from tests.helpers import TESTS, Runner, wait_for

SAMPLES = 300


class CountingReader:
    """A reader creator of ``SAMPLES`` samples in batches of 10, counting the batches read."""

    def __init__(self, batch: int = 10) -> None:
        self.batch = batch
        self.batches = 0
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        for start in range(0, SAMPLES, self.batch):
            with self._lock:
                self.batches += 1
            x = np.arange(start, min(start + self.batch, SAMPLES), dtype=np.int64)
            yield {"x": x.reshape(-1, 1), "y": (2 * x).astype(np.float32).reshape(-1, 1)}


def serve(teacher: Teacher, reader: Any, **kwargs: Any) -> Runner:
    return Runner(lambda: teacher.serve(reader, **kwargs))


def student_proc(spawn: Any, address: str, checkpoint: Path, *flags: str) -> Any:
    args = [str(TESTS / "student_proc.py"), "--address", address, "--checkpoint", str(checkpoint)]
    return spawn([*args, *flags])


def seen_of(checkpoint: Path) -> list[list[int]]:
    return json.loads(checkpoint.read_text())["seen"]


def test_three_ranks_share_one_round_and_a_killed_rank_resumes(spawn, tmp_path) -> None:
    reader = CountingReader()
    with Teacher(out_port=0, timeout=60) as teacher:
        runner = serve(teacher, reader)
        ranks = {}
        for r in range(3):
            flags = ["--rank", str(r), "--world", "3", "--batch", "8", "--delay", "0.01"]
            ranks[r] = (
                student_proc(spawn, teacher.address, tmp_path / f"r{r}.json", *flags),
                flags,
            )
        victim = ranks[1][0]
        victim.wait_line("STEP 3")
        victim.kill(signal.SIGKILL)
        victim.finish()
        again = student_proc(spawn, teacher.address, tmp_path / "r1.json", *ranks[1][1])
        for proc in (ranks[0][0], ranks[2][0], again):
            proc.wait_line("DONE")
            assert proc.finish() == 0
        runner.join(60)
    rounds = [seen_of(tmp_path / f"r{r}.json")[0] for r in range(3)]
    for r, ids in enumerate(rounds):
        assert ids == list(range(r, SAMPLES, 3)), f"rank {r}: its shard, in order, exactly once"
    assert sorted(i for ids in rounds for i in ids) == list(range(SAMPLES))
    # one run of the reader for the three ranks, plus what the restarted rank re-asked for
    assert reader.batches <= 2 * SAMPLES // 10


def test_fan_out_groups_get_whole_rounds_from_one_prediction() -> None:
    reader = CountingReader()
    got: dict[str, list[list[int]]] = {}

    def job(name: str) -> None:
        with Student(timeout=60, group=name) as student:
            student.register_teacher(in_address=teacher.address)
            gen = student.get_knowledge_generator(batch_size=32)
            got[name] = [np.concatenate([b["x"].ravel() for b in gen()]).tolist() for _ in range(2)]

    with Teacher(out_port=0, timeout=60) as teacher:
        runner = serve(teacher, reader, times=2, groups=3)
        jobs = [Runner(lambda n=f"job{i}": job(n)) for i in range(3)]
        for j in jobs:
            j.join(60)
        runner.join(60)
    for name in ("job0", "job1", "job2"):
        assert got[name] == [list(range(SAMPLES))] * 2
    assert reader.batches == 2 * SAMPLES // 10, "the reader ran once per round for 3 groups"


def test_drop_last_gives_every_rank_the_same_number_of_batches() -> None:
    counts: dict[int, int] = {}

    def rank(r: int) -> None:
        with Student(timeout=60, rank=r, world_size=4) as student:
            student.register_teacher(in_address=teacher.address)
            batches = list(student.get_knowledge_generator(batch_size=10, drop_last=True)())
            counts[r] = len(batches)
            assert all(len(b["x"]) == 10 for b in batches)

    def reader() -> Any:  # 83 samples: ranks hold 21, 21, 21, 20
        for start in range(0, 83, 7):
            yield {"x": np.arange(start, min(start + 7, 83)).reshape(-1, 1)}

    with Teacher(out_port=0, timeout=60) as teacher:
        runner = serve(teacher, reader)
        ranks = [Runner(lambda r=r: rank(r)) for r in range(4)]
        for job in ranks:
            job.join(60)
        runner.join(60)
    assert counts == {0: 2, 1: 2, 2: 2, 3: 2}  # floor(floor(83 / 4) / 10)


def test_offline_ranks_read_their_shards(tmp_path) -> None:
    path = tmp_path / "k.arrow"
    with Teacher(out_path=path) as teacher:
        for batch in CountingReader(batch=13)():
            teacher.dump(batch)
    union: list[int] = []
    for r in range(3):
        with Student(rank=r, world_size=3) as student:
            student.register_teacher(in_path=path)
            ids = np.concatenate([b["x"].ravel() for b in student.get_knowledge_generator(8)()])
            assert ids.tolist() == list(range(r, SAMPLES, 3))
            union += ids.tolist()
    assert sorted(union) == list(range(SAMPLES))


def doubling_service(
    codecs: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[Teacher, Runner, list[int]]:
    """A knowledge service in query mode answering ``2 * x``, serving in a thread, and the
    samples of each of its program calls."""
    sizes: list[int] = []

    def program(x: np.ndarray) -> dict[str, np.ndarray]:
        sizes.append(len(x))
        return {"double": 2 * x}

    teacher = Teacher(out_port=0, timeout=60, codecs=codecs)
    runner = Runner(
        lambda: teacher.start_knowledge_service(
            feed_list=["x"],
            schema={"double": "double"},
            program=program,
            reader_config=None,
            **kwargs,
        )
    )
    return teacher, runner, sizes


def test_queries_of_four_students_are_batched_and_answered_in_order() -> None:
    teacher, runner, sizes = doubling_service(max_batch=64, max_delay=0.05)
    results: dict[int, list[int]] = {}

    def ask(s: int) -> None:
        queries = [
            {"x": np.arange(s * 1000 + i * 4, s * 1000 + i * 4 + 4).reshape(-1, 1)}
            for i in range(25)
        ]
        with Student(timeout=60, group=f"s{s}") as student:
            student.register_teacher(in_address=teacher.address)
            out = []
            for batch in student.get_knowledge_generator(4, queries=queries)():
                assert np.array_equal(batch["double"], 2 * batch["x"])
                out += batch["x"].ravel().tolist()
            results[s] = out

    try:
        askers = [Runner(lambda s=s: ask(s)) for s in range(4)]
        for a in askers:
            a.join(60)
        runner.join(60)
    finally:
        teacher.close()
    for s in range(4):
        assert results[s] == list(range(s * 1000, s * 1000 + 100))
    assert sum(sizes) == 400
    assert max(sizes) > 4, f"queries of several students were merged: {sizes}"


def test_an_answer_its_codec_refuses_fails_that_query_and_the_service_answers_on() -> None:
    """An answer out of its int16 codec's range cannot be sent: that query fails with the
    reason, and the service answers the next queries (its query thread died, and every
    later query waited out the student's timeout)."""
    teacher, runner, _sizes = doubling_service(codecs={"double": "int16"})
    queries = [{"x": np.arange(start, start + 4).reshape(-1, 1)} for start in (0, 40_000, 8)]
    try:
        with Student(timeout=30, read_ahead=1) as student:
            student.register_teacher(in_address=teacher.address)
            gen = student.get_knowledge_generator(4, queries=queries)()
            assert next(gen)["double"].ravel().tolist() == [0, 2, 4, 6]
            with pytest.raises(TeacherError, match=r"query 1 failed on the teacher: .*int16"):
                next(gen)
            gen.close()
            again = [{"x": np.arange(20, 24).reshape(-1, 1)}]
            got = [b["double"] for b in student.get_knowledge_generator(4, queries=again)()]
            assert np.concatenate(got).ravel().tolist() == [40, 42, 44, 46]
        runner.join(30)
    finally:
        teacher.close()


def test_an_answer_of_another_shape_fails_that_query_and_the_service_answers_on() -> None:
    """Answers were not checked against the description the first one set: one of another
    trailing shape reached the student, whose reader refused it as a protocol error and
    closed the connection, ending the whole generator."""
    teacher = Teacher(out_port=0, timeout=60)
    runner = Runner(
        lambda: teacher.start_knowledge_service(
            feed_list=["x"],
            schema={"y": "y"},
            program=lambda x: {"y": np.repeat(x, x[0, 0], axis=1)},  # width: the first value
            reader_config=None,
        )
    )
    widths = [{"x": np.full((2, 1), w)} for w in (1, 2, 1)]
    try:
        with Student(timeout=30, read_ahead=1) as student:
            student.register_teacher(in_address=teacher.address)
            gen = student.get_knowledge_generator(2, queries=widths)()
            assert next(gen)["y"].shape == (2, 1)
            with pytest.raises(TeacherError, match=r"query 1 failed on the teacher: .*shape"):
                next(gen)
            gen.close()
            again = [{"x": np.full((2, 1), 1)}]
            assert [b["y"].shape for b in student.get_knowledge_generator(2, queries=again)()] == [
                (2, 1)
            ]
        runner.join(30)
    finally:
        teacher.close()


def test_a_query_whose_queue_stayed_full_is_told_so(monkeypatch) -> None:
    """A query that waited past the heartbeat timeout for room in the teacher's query queue
    failed with "the teacher stopped answering", while it was answering."""
    from pantheon._online import server

    monkeypatch.setattr(server, "QueryBatcher", functools.partial(QueryBatcher, max_queued=1))
    gate = threading.Event()

    def program(x: np.ndarray) -> dict[str, np.ndarray]:
        assert gate.wait(20)
        return {"double": 2 * x}

    teacher = Teacher(out_port=0, timeout=60, heartbeat_interval=0.3, heartbeat_timeout=1.5)
    runner = Runner(
        lambda: teacher.start_knowledge_service(
            feed_list=["x"], schema={"double": "double"}, program=program, reader_config=None
        )
    )
    queries = [{"x": np.arange(i, i + 4).reshape(-1, 1)} for i in range(0, 16, 4)]
    try:
        with Student(timeout=30, read_ahead=4) as student:
            student.register_teacher(in_address=teacher.address)
            gen = student.get_knowledge_generator(4, queries=queries)()
            # query 0 in the program, 1 queued, 2 waits for room and gives up
            machine = student._sources[0].machine
            asked = Runner(lambda: [next(gen), next(gen)])
            assert wait_for(lambda: 2 in machine.answers)
            gate.set()
            assert [b["double"].ravel()[0] for b in asked.join(30)] == [0, 8]
            with pytest.raises(TeacherError, match=r"query 2: the teacher's query queue stayed"):
                next(gen)
            gen.close()
        runner.join(30)
    finally:
        gate.set()
        teacher.close()


def test_a_query_generator_left_early_leaves_no_answers_to_the_next() -> None:
    """A training loop leaves its query generator with queries in flight, and starts
    another: each query id was taken again from 0, so the next generator got the answers
    to the old generator's queries, paired with its own inputs, and stayed shifted."""
    teacher, runner, _sizes = doubling_service()
    first = [{"x": np.full((4, 1), 100 + i)} for i in range(30)]
    second = [{"x": np.full((4, 1), 900 + i)} for i in range(30)]
    try:
        with Student(timeout=30, read_ahead=4) as student:
            student.register_teacher(in_address=teacher.address)
            for i, _batch in enumerate(student.get_knowledge_generator(4, queries=first)()):
                if i == 1:
                    break  # a fixed number of steps, with queries in flight
            machine = student._sources[0].machine
            assert wait_for(lambda: not any(lk.outstanding for lk in machine.links))
            got = list(student.get_knowledge_generator(4, queries=second)())
            assert [b["x"][0, 0] for b in got] == [900 + i for i in range(30)]
            for batch in got:
                assert np.array_equal(batch["double"], 2 * batch["x"]), batch
            assert not machine.answers, "the left generator's answers were kept"
        runner.join(30)
    finally:
        teacher.close()


def serve_after_held_queries(monkeypatch: Any, count: int) -> threading.Event:
    """Make the next query serving wait until ``count`` queries were held for its start
    (they came once the query batcher existed but before the serving machine did); the
    event is set when they were."""
    from pantheon._online.early import EarlyRequests
    from pantheon._online.server import TeacherServer

    held = threading.Event()
    seen = [0]
    hold, serve_ = EarlyRequests.hold, TeacherServer._serve

    def hold_and_tell(self: Any, *args: Any) -> None:
        hold(self, *args)
        seen[0] += 1
        if seen[0] >= count:
            held.set()

    def serve_after_queries(self: Any, machine: Any) -> None:
        if machine.queries:  # the batcher is up, the machine not yet: wait for the queries
            assert held.wait(30), f"{seen[0]} queries came, not {count}"
        serve_(self, machine)

    monkeypatch.setattr(EarlyRequests, "hold", hold_and_tell)
    monkeypatch.setattr(TeacherServer, "_serve", serve_after_queries)
    return held


def ask_queries_of_four(n: int) -> None:
    """A student asks ``n`` queries of 4 samples (8 in flight) of a doubling service: each is
    answered right and computed once, in order."""
    teacher, runner, sizes = doubling_service()
    queries = [{"x": np.arange(i, i + 4).reshape(-1, 1)} for i in range(0, 4 * n, 4)]
    try:
        with Student(timeout=30, read_ahead=8) as student:
            student.register_teacher(in_address=teacher.address)
            got = [b["double"] for b in student.get_knowledge_generator(4, queries=queries)()]
        runner.join(30)
    finally:
        teacher.close()
    assert np.array_equal(np.concatenate(got).ravel(), 2 * np.arange(4 * n))
    assert sizes == [4] * n, f"each query computed once, in order: {sizes}"


def test_a_query_that_comes_as_the_serving_starts_is_computed_once(monkeypatch) -> None:
    """A query that arrives once the query batcher exists but before the serving machine
    does is held for the machine's start and submitted then: not also at once (which
    computed it twice, and sent its answer twice)."""
    held = serve_after_held_queries(monkeypatch, 1)
    ask_queries_of_four(10)
    assert held.is_set()


@pytest.mark.timeout(40)
def test_more_held_queries_than_the_batcher_queues_are_all_answered(monkeypatch) -> None:
    """The queries held for the serving's start go to the batcher at once, even past its
    ``max_queued``: waiting for room there under the teacher's lock, which answering takes,
    stalled the teacher for its heartbeat timeout per query and then dropped them."""
    import functools

    from pantheon._online import server
    from pantheon._online.queries import QueryBatcher

    monkeypatch.setattr(server, "QueryBatcher", functools.partial(QueryBatcher, max_queued=2))
    held = serve_after_held_queries(monkeypatch, 8)  # the student's 8 queries in flight
    ask_queries_of_four(20)
    assert held.is_set()


def test_the_write_through_cache_replays_later_rounds(spawn, tmp_path) -> None:
    reader = CountingReader()
    cache = tmp_path / "cache"
    checkpoint = tmp_path / "student.json"
    flags = ["--rounds", "3", "--cache", str(cache), "--batch", "16", "--delay", "0.005"]
    with Teacher(out_port=0, timeout=60) as teacher:
        runner = serve(teacher, reader, times=1)
        first = student_proc(spawn, teacher.address, checkpoint, *flags)
        first.wait_line("STEP 4")
        first.kill(signal.SIGKILL)  # killed in the middle of the first round
        first.finish()
        second = student_proc(spawn, teacher.address, checkpoint, *flags)
        second.wait_line("ROUND 0")
        runner.join(60)  # the teacher served its one round and is done
    second.wait_line("DONE")  # rounds 1 and 2 came from the cache: the teacher is gone
    assert second.finish() == 0
    rounds = seen_of(checkpoint)
    assert rounds == [list(range(SAMPLES))] * 3
    assert reader.batches <= 2 * SAMPLES // 10
    import pyarrow as pa  # the cache is an ordinary knowledge file, readable with pyarrow

    parts = sorted(cache.glob("part-*.arrow"))
    with pa.memory_map(str(parts[0])) as m:
        assert pa.ipc.open_file(m).schema.names[:2] == ["__sample_id__", "x"]


def test_a_cache_added_on_resume_holds_the_whole_round(tmp_path) -> None:
    """A student resumed in round 0 past what its cache holds (the cache was added on the
    restart, or removed) had the teacher start at its position: the samples before it never
    reached the cache, which was still marked complete, and every later round replayed a
    short cache."""
    cache = tmp_path / "cache"
    with Teacher(out_port=0, timeout=60) as teacher:
        runner = serve(teacher, CountingReader(), times=1)
        student = Student(timeout=30)
        student.register_teacher(in_address=teacher.address)
        seen = []
        for i, batch in enumerate(student.get_knowledge_generator(50)()):
            seen += batch["x"].ravel().tolist()
            if i == 1:
                state = student.state_dict()
                break
        student.close(resume=True)  # the teacher waits for it to come back
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address, cache_path=cache)
            student.load_state_dict(state)
            gen = student.get_knowledge_generator(50)
            seen += [int(x) for b in gen() for x in b["x"].ravel()]
            runner.join(60)  # the teacher served its one round and is done
            replayed = [int(x) for b in gen() for x in b["x"].ravel()]
    assert seen == list(range(SAMPLES))
    assert replayed == list(range(SAMPLES)), "round 1 from the cache"


def test_a_cache_of_another_teacher_is_refused(tmp_path) -> None:
    cache = tmp_path / "cache"
    with Teacher(out_port=0, timeout=30) as teacher:
        runner = serve(teacher, CountingReader())
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address, cache_path=cache)
            assert len(list(student.get_knowledge_generator(50)())) == 6
        runner.join(30)

    def other() -> Any:
        yield {"z": np.zeros((4, 3), np.float32)}

    with Teacher(out_port=0, timeout=3) as teacher:
        runner = Runner(lambda: teacher.serve(other))
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address, cache_path=cache)
            student.start()
            with pytest.raises(Exception, match="written from another teacher"):
                student.get_knowledge_desc()
        # the refused student never asked for a round: its goodbye does not end the serve call
        # (nor would a probe's); the teacher waits for a student as long as its timeout says
        with pytest.raises(TeacherError, match="no student connected"):
            runner.join(30)


def test_more_rounds_than_served_end_at_once_with_the_reason() -> None:
    with Teacher(out_port=0, timeout=30) as teacher:
        runner = serve(teacher, CountingReader(), times=1)
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address)
            gen = student.get_knowledge_generator(100)
            assert len(list(gen())) == 3
            with pytest.raises(
                TeacherError, match=r"served its 1 round\(s\) \(times=1\); this is round 1"
            ):
                list(gen())
        runner.join(30)


def test_a_student_leaving_early_ends_the_teacher_with_the_reason() -> None:
    with Teacher(out_port=0, timeout=300) as teacher:
        runner = serve(teacher, CountingReader(), times=2)
        with Student(timeout=30) as student:
            student.register_teacher(in_address=teacher.address)
            list(student.get_knowledge_generator(100)())  # round 0 of 2, then goodbye
        with pytest.raises(TeacherError, match=r"left after round 0"):
            runner.join(10)  # at once, not after its 300 s timeout


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on CPU")
def test_torchrun_ddp_two_ranks_train_from_one_teacher(tmp_path) -> None:
    pytest.importorskip("torch")
    script = TESTS / "ddp_student.py"
    reader = CountingReader()
    with Teacher(out_port=0, timeout=120) as teacher:
        runner = serve(teacher, reader, times=2)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", "2", str(script), teacher.address, str(tmp_path)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=180)
        finally:  # torchrun's workers are in its session: none outlives the test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 0, err[:4000] + "\n...\n" + err[-3000:]
        runner.join(60)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert out[0]["batches"] == out[1]["batches"] > 0
    # drop_last: each rank takes floor(floor(300 / 2) / 16) = 9 batches a round; 6 samples dropped
    assert out[0]["batches"] == 2 * 9
    assert len(set(out[0]["ids"]) & set(out[1]["ids"])) == 0
    assert out[0]["final_weight"] == pytest.approx(out[1]["final_weight"])  # DDP kept them equal
    assert reader.batches == 2 * SAMPLES // 10
