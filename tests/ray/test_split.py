"""How a same-order pool splits a round and the student puts it back: both sides, no cluster.

A replica's reader (``split_reader``) and the student's re-interleaving (``SplitRound``) must
agree on every sample; these tests run the real reader splitting and the real ``SplitRound``
over the sub-rounds it produces (list-backed streams stand in for the replicas' sockets,
which tests/ray/test_pool.py runs for real).
"""

from __future__ import annotations

import numpy as np
import pytest

from pantheon import ConfigError
from pantheon._knowledge import Chunk
from pantheon._online import Membership, SplitRound, open_resolver, register_scheme, scheme_of

pytestmark = pytest.mark.ray
pytest.importorskip("ray")
from pantheon.ray._split import block_of, split_reader  # noqa: E402

N = 203  # samples of the round


def _samples():
    for i in range(N):
        yield (np.array([i], np.int64),)


def _lists():  # lists of varying sizes
    i, size = 0, 1
    while i < N:
        yield [(np.array([k], np.int64),) for k in range(i, min(N, i + size))]
        i, size = i + size, size % 9 + 1


def _batches():
    for i in range(0, N, 7):
        yield (np.arange(i, min(N, i + 7), dtype=np.int64).reshape(-1, 1),)


READERS = {
    "sample_generator": (
        {"sample_generator": _samples, "batch_size": 16, "drop_last": False},
        None,
    ),
    "sample_list_generator": ({"sample_list_generator": _lists}, 10),
    "batch_generator": ({"batch_generator": _batches}, 10),
}


def _sub_rounds(config, replicas, block):
    """Each replica's sub-round: its samples' x in its order."""
    out = []
    for j in range(replicas):
        split = split_reader(["x"], config, j, replicas, block)
        gen = split["batch_generator"](0)
        xs = [np.asarray(b["x"])[:, 0] for b in gen]
        for b in xs[:-1]:
            assert len(b) == block  # whole blocks, the round's last one excepted
        out.append(np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return out


class ListRound:
    """A replica's sub-round for one rank, from a position, in chunks of a few samples."""

    def __init__(self, xs: np.ndarray, rank: int, world: int, start: int) -> None:
        local = np.arange(len(xs))[rank::world][start:]
        self._chunks = [local[i : i + 3] for i in range(0, len(local), 3)]
        self._xs = xs
        self.total = len(xs)

    def next_chunk(self, timeout: float, stop=None):
        if not self._chunks:
            return None
        ids = self._chunks.pop(0)
        return Chunk(ids.astype(np.int64), {"x": self._xs[ids]})

    def known_samples(self) -> int:
        return self.total

    def close(self) -> None:
        self._chunks = []


@pytest.mark.parametrize("kind", list(READERS))
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_the_replicas_blocks_put_back_give_the_round_in_order(kind, replicas):
    config, split = READERS[kind]
    block = block_of(config, split)
    subs = _sub_rounds(config, replicas, block)
    assert sorted(np.concatenate(subs).tolist()) == list(range(N))  # every sample once
    streams = [ListRound(xs, 0, 1, 0) for xs in subs]
    rnd = SplitRound(streams, block, 0, 1, 0)
    got_ids, got_x = [], []
    while (chunk := rnd.next_chunk(1.0)) is not None:
        got_ids += chunk.ids.tolist()
        got_x += chunk.data["x"].tolist()
    assert got_ids == list(range(N)) and got_x == list(range(N))
    assert rnd.known_samples() == N


@pytest.mark.parametrize(("world", "start"), [(1, 0), (1, 37), (2, 0), (2, 13), (4, 9), (4, 50)])
def test_each_rank_resumes_at_its_position_with_the_rounds_ids(world, start):
    config, _ = READERS["sample_generator"]
    subs = _sub_rounds(config, 3, 16)
    for rank in range(world):
        positions = SplitRound.positions(start, 3, 16, world)
        streams = [ListRound(xs, rank, world, p) for xs, p in zip(subs, positions)]
        rnd = SplitRound(streams, 16, rank, world, start)
        ids = []
        while (chunk := rnd.next_chunk(1.0)) is not None:
            assert chunk.ids.tolist() == chunk.data["x"].tolist()  # the ids are the samples'
            ids += chunk.ids.tolist()
        assert ids == list(range(rank + start * world, N, world))


def test_a_block_size_is_needed_without_a_batch_size():
    with pytest.raises(ConfigError, match="split_samples"):
        block_of({"batch_generator": _batches}, None)
    with pytest.raises(ConfigError, match="split_samples"):
        block_of({"batch_generator": _batches}, 0)
    assert block_of({"sample_generator": _samples, "batch_size": 16}, None) == 16


def test_schemes_are_resolved_through_the_registry():
    assert scheme_of("ray://pool") == "ray" and scheme_of("127.0.0.1:80") is None
    with pytest.raises(ConfigError, match="no resolver for the scheme 'nosuch'"):
        open_resolver("nosuch://x")

    class Fixed:
        def __init__(self, address: str) -> None:
            self.name = address

        def members(self, timeout: float) -> Membership:
            return Membership("queries", ("127.0.0.1:1", None), 2)

    register_scheme("fixed", Fixed)
    assert open_resolver("fixed://a").members(1.0).address(1) is None
    with pytest.raises(ConfigError, match="mode"):
        Membership("other", (), 0)
    with pytest.raises(ConfigError, match="block"):
        Membership("rounds", ("a:1",), 1, 0)
