"""pantheon.torch.KnowledgeLookup and WithKnowledge: samplers, loader workers, pairing."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import (  # noqa: E402
    ConcatDataset,
    DataLoader,
    DistributedSampler,
    RandomSampler,
)

from pantheon import ConfigError, KnowledgeError, KnowledgeWriter, Ragged, TopK  # noqa: E402
from pantheon.torch import KnowledgeLookup, KnowledgeSamples, WithKnowledge  # noqa: E402

N = 60


def dump(path: Path, n: int = N, *, ragged: bool = True, batch: int = 7, **kwargs: Any) -> Path:
    """Knowledge of ``n`` samples whose every field is computed from the sample id."""
    with KnowledgeWriter(path, **kwargs) as w:
        for start in range(0, n, batch):
            ids = np.arange(start, min(n, start + batch))
            data: dict[str, Any] = {
                "x": ids.reshape(-1, 1),
                "logits": np.stack([ids * 0.5 + j for j in range(6)], axis=1).astype(np.float32),
            }
            if ragged:
                lengths = ids % 4
                data["tok"] = Ragged(np.repeat(ids, lengths).astype(np.int32), lengths)
            w.write(data)
    return path


def check_batch(batch: dict[str, Any], ids: list[int]) -> None:
    """Every field of ``batch`` is the knowledge of ``ids``, in order."""
    ids_t = torch.tensor(ids)
    assert batch["x"].reshape(-1).tolist() == ids
    expect = torch.stack([ids_t * 0.5 + j for j in range(6)], dim=1).float()
    assert torch.equal(batch["logits"], expect)
    if "tok" in batch:
        padded, lengths = batch["tok"]
        assert lengths.tolist() == [i % 4 for i in ids]
        for row, i in zip(padded, ids):
            assert row[: i % 4].tolist() == [i] * (i % 4)
            assert row[i % 4 :].tolist() == [0] * (len(row) - i % 4)


def test_distributed_sampler_two_ranks_two_workers_cover_every_sample(tmp_path: Path) -> None:
    lookup = KnowledgeLookup(dump(tmp_path / "k.arrow"))
    assert len(lookup) == N
    orders = {}
    for rank in (0, 1):
        sampler = DistributedSampler(lookup, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(
            lookup,
            batch_size=8,
            sampler=sampler,
            num_workers=2,
            collate_fn=lookup.collate,
            persistent_workers=True,
        )
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            asked = list(sampler)
            seen: list[int] = []
            for batch in loader:
                ids = asked[len(seen) : len(seen) + len(batch["x"])]
                check_batch(batch, ids)  # the knowledge belongs to the ids the sampler drew
                seen += ids
            assert seen == asked
            orders[rank, epoch] = seen
    for epoch in (0, 1):
        both = orders[0, epoch] + orders[1, epoch]
        assert sorted(both) == list(range(N))  # the ranks cover every sample, once
    assert orders[0, 0] != orders[0, 1]  # set_epoch reshuffles


def test_random_sampler_with_the_default_collate(tmp_path: Path) -> None:
    lookup = KnowledgeLookup(dump(tmp_path / "k.arrow", ragged=False))
    generator = torch.Generator().manual_seed(0)
    sampler = RandomSampler(lookup, generator=generator)
    order = list(RandomSampler(lookup, generator=torch.Generator().manual_seed(0)))
    batches = list(DataLoader(lookup, batch_size=16, sampler=sampler))
    xs = torch.cat([b["x"].reshape(-1) for b in batches]).tolist()
    assert xs == order
    for b in batches:
        check_batch(b, b["x"].reshape(-1).tolist())


def test_items_batches_and_samples_one_by_one(tmp_path: Path) -> None:
    lookup = KnowledgeLookup(dump(tmp_path / "k.arrow"))
    item = lookup[9]
    assert item["x"].tolist() == [9]
    assert item["tok"].tolist() == [9]
    assert item["logits"].shape == (6,)
    samples = lookup.__getitems__([5, 2, 5])
    assert isinstance(samples, KnowledgeSamples)
    assert len(samples) == 3
    assert [s["x"].item() for s in samples] == [5, 2, 5]
    check_batch(lookup.collate(samples), [5, 2, 5])
    check_batch(lookup.take([11, 3]), [11, 3])
    # samples read one by one (a ConcatDataset has no __getitems__) are stacked and padded
    both = ConcatDataset([lookup, lookup])
    batch = next(iter(DataLoader(both, batch_size=5, shuffle=False, collate_fn=lookup.collate)))
    check_batch(batch, [0, 1, 2, 3, 4])
    with pytest.raises(KnowledgeError, match="sample id 60"):
        lookup[N]


def test_tensors_can_be_written_even_when_read_in_place(tmp_path: Path) -> None:
    path = dump(tmp_path / "k.arrow", ragged=False, batch=30)
    lookup = KnowledgeLookup(path)
    batch = lookup.take(range(0, 8))  # one run inside one stored batch: views of the file...
    batch["logits"] *= 0  # ...copied before they became tensors
    check_batch(lookup.take(range(0, 8)), list(range(8)))


def test_pickled_without_the_mapped_file_and_reopened_per_process(tmp_path: Path) -> None:
    lookup = KnowledgeLookup(dump(tmp_path / "k.arrow"), ragged_fill=-1)
    lookup.take([1])
    blob = pickle.dumps(lookup)
    assert len(blob) < 1000
    copy = pickle.loads(blob)
    assert copy._file is None  # opened on first use
    assert copy.take([3])["tok"][0].tolist() == [[3, 3, 3]]
    assert copy.ragged_fill == -1
    lookup._pid = os.getpid() + 1  # as in a forked worker: the file is mapped again
    first = lookup._file
    assert lookup.file is not first


def test_sparse_topk_fields_come_as_values_and_indices(tmp_path: Path) -> None:
    path = dump(tmp_path / "k.arrow", codecs={"logits": TopK(2)})
    lookup = KnowledgeLookup(path, sparse_topk=True)
    values, indices = lookup.take([4, 0])["logits"]
    assert indices.tolist() == [[5, 4], [5, 4]]
    assert values.tolist() == [[7.0, 6.0], [5.0, 4.0]]
    one_values, one_indices = lookup[4]["logits"]
    assert (one_values.tolist(), one_indices.tolist()) == ([7.0, 6.0], [5, 4])
    dense = KnowledgeLookup(path).take([4])["logits"]
    assert dense[0, 5].item() == 7.0
    assert dense[0, 0].item() == float("-inf")


class Numbers(torch.utils.data.Dataset):  # type: ignore[misc]
    """A user's dataset: item i is (i, i * 10) as tensors."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return torch.tensor(i), torch.tensor(i * 10)


def test_with_knowledge_pairs_a_dataset_in_spawned_workers(tmp_path: Path) -> None:
    paired = WithKnowledge(Numbers(), dump(tmp_path / "k.arrow"))
    sampler = RandomSampler(paired, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(
        paired,
        batch_size=9,
        sampler=sampler,
        num_workers=2,
        multiprocessing_context="spawn",  # everything the workers get is pickled
        collate_fn=paired.collate,
    )
    seen = []
    for (index, tens), knowledge in loader:
        assert torch.equal(tens, index * 10)
        check_batch(knowledge, index.tolist())
        seen += index.tolist()
    assert sorted(seen) == list(range(N))
    item, know = paired[7]
    assert item[0].item() == 7
    assert know["x"].tolist() == [7]
    pairs = [paired[i] for i in (3, 1)]
    data, knowledge = paired.collate(pairs)
    assert data[0].tolist() == [3, 1]
    check_batch(knowledge, [3, 1])


def test_with_knowledge_refuses_a_dataset_of_another_length(tmp_path: Path) -> None:
    path = dump(tmp_path / "k.arrow", n=N - 1)
    with pytest.raises(ConfigError, match=r"60 items but .* 59 samples"):
        WithKnowledge(Numbers(), path)


def test_sampled_fields_come_as_ids_and_counts(tmp_path: Path) -> None:
    from pantheon import Sampled

    path = dump(tmp_path / "k.arrow", codecs={"logits": Sampled(4, seed=2)})
    lookup = KnowledgeLookup(path, sparse_topk=True)
    ids, counts = lookup.take([4, 0])["logits"]
    assert ids.shape == counts.shape == (2, 4)
    assert ids.dtype == torch.int32 and counts.dtype == torch.uint8
    assert counts.sum(dim=1).tolist() == [4, 4]
    one_ids, one_counts = lookup[4]["logits"]
    assert one_ids.tolist() == ids[0].tolist() and one_counts.tolist() == counts[0].tolist()
    ids[0, 0] = 7  # tensors of a read can be written to (copies of the mapped file)
