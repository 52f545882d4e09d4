"""Per-round readers: ``reader(round_index)`` shuffles each round with a seed of its own."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from pantheon import ConfigError, KnowledgeFile, Student, Teacher
from pantheon._service import ServiceSpec, reader_round_factory, reader_takes_round
from tests.helpers import Runner, round_factory

N, SEED = 50, 1234


def epoch_order(round_index: int) -> np.ndarray:
    """The data order of one epoch: what teacher and student both compute."""
    return np.random.default_rng(SEED + round_index).permutation(N)


def shuffled_reader(round_index: int) -> Any:
    """Knowledge batches of one epoch, in that epoch's order; ``index`` is the dataset index."""
    order = epoch_order(round_index)
    for start in range(0, N, 8):
        index = order[start : start + 8]
        yield {"index": index, "double": 2 * index.reshape(-1, 1)}


def test_which_readers_take_the_round_index() -> None:
    def seed_style() -> None: ...
    def per_round(round_index: int) -> None: ...
    def defaults(batch_size: int = 3, *args: Any, **kw: Any) -> None: ...
    def two(a: int, b: int) -> None: ...
    def keyword(*, seed: int) -> None: ...

    assert not reader_takes_round(seed_style, "r")
    assert reader_takes_round(per_round, "r")
    assert reader_takes_round(lambda r: iter(()), "r")
    assert not reader_takes_round(defaults, "r")
    assert reader_takes_round(functools.partial(two, 1), "r")
    for bad in (two, keyword):
        with pytest.raises(ConfigError, match=r"round index .* needs (a, b|seed)"):
            reader_takes_round(bad, "the reader")
    with pytest.raises(ConfigError, match=r"reader_config\['batch_generator'\]"):
        ServiceSpec(["x"], {"x": "x"}, None, {"batch_generator": two})


def test_a_round_factory_passes_the_round_to_the_reader() -> None:
    make_round = reader_round_factory(shuffled_reader)
    for rnd in (0, 1, 2):
        chunks = list(make_round(rnd, 0))
        assert np.concatenate([c.ids for c in chunks]).tolist() == list(range(N))
        index = np.concatenate([c.data["index"] for c in chunks])
        assert index.tolist() == epoch_order(rnd).tolist()
    resumed = list(make_round(1, 45))
    assert (
        np.concatenate([c.data["index"] for c in resumed]).tolist() == epoch_order(1)[45:].tolist()
    )
    seed_style = reader_round_factory(lambda: shuffled_reader(0))
    assert [c.ids.tolist() for c in seed_style(3, 48)] == [[48, 49]]


def test_the_service_reader_config_takes_the_round_index() -> None:
    def batches(round_index: int) -> Any:
        for start in range(0, N, 10):
            yield (epoch_order(round_index)[start : start + 10].reshape(-1, 1),)

    make_round = round_factory(
        ["x"], {"x": "x", "y": "output"}, lambda x: x + 1, {"batch_generator": batches}
    )
    for rnd in (0, 1):
        got = np.concatenate([c.data["x"].ravel() for c in make_round(rnd, 0)])
        assert got.tolist() == epoch_order(rnd).tolist()
    plain = round_factory(["x"], {"x": "x"}, None, {"batch_generator": lambda: batches(5)})
    assert (
        np.concatenate([c.data["x"].ravel() for c in plain(2, 0)]).tolist()
        == epoch_order(5).tolist()
    )
    with pytest.raises(ConfigError, match="round_index"):
        make_round(-1, 0)


def test_online_each_epoch_in_its_own_order_and_a_student_aligned_with_it() -> None:
    dataset = np.arange(N) * 100  # the student's own copy of the data, by dataset index
    teacher = Teacher(out_port=0, timeout=30)
    served = Runner(lambda: teacher.serve(shuffled_reader, times=3))
    with Student(timeout=30) as student:
        student.register_teacher(in_address=teacher.address)
        student.start()
        gen = student.get_knowledge_generator(batch_size=16)
        for epoch in range(3):
            order = epoch_order(epoch)  # the student's loader shuffles with the same seed
            seen = 0
            for batch in gen():
                n = len(batch["index"])
                mine = order[seen : seen + n]  # the student's own batch, in its own order
                np.testing.assert_array_equal(batch["index"], mine)
                np.testing.assert_array_equal(batch["double"].ravel(), 2 * dataset[mine] // 100)
                seen += n
            assert seen == N
    served.join()
    teacher.close()


def test_offline_a_round_aware_reader_dumps_round_0(tmp_path) -> None:
    with Teacher(out_path=tmp_path / "k.arrow") as teacher:
        teacher.serve(shuffled_reader)
    with KnowledgeFile(tmp_path / "k.arrow") as kf:
        assert kf.sample_ids.tolist() == list(range(N))
        assert kf.take(range(N))["index"].tolist() == epoch_order(0).tolist()
