"""KnowledgeFile.take and sample_ids: random access by sample id, against direct reads."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pantheon import ClosedError, ConfigError, KnowledgeError, Ragged, TopK
from pantheon._files import KnowledgeFile, KnowledgeWriter
from pantheon._knowledge import FINGERPRINT_KEYS
from tests.files.test_files import (
    _FIELD,
    _mapped_ranges,
    _message_ends,
    _toy_batches,
    assert_same,
    random_batches,
    read_all,
    write_batches,
)


def expected_rows(data, positions):
    """The samples at ``positions`` of fully read fields, one by one (no vectorised gather)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, Ragged):
            samples = value.to_list()
            picked = [samples[p] for p in positions]
            values = (
                np.concatenate(picked) if picked else value.values[:0]
            )  # (np.concatenate needs one array)
            out[key] = Ragged(values.reshape(-1, *value.inner_shape), [len(s) for s in picked])
        else:
            out[key] = np.stack([value[p] for p in positions]) if positions else value[:0]
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.lists(_FIELD, min_size=1, max_size=3),
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    shard=st.sampled_from([None, 1, 5]),
    codec=st.sampled_from([None, "float16", "topk"]),
    compression=st.sampled_from([None, None, "lz4"]),
    shuffled_ids=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_take_matches_direct_reads(
    fields, sizes, shard, codec, compression, shuffled_ids, seed, data
):
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    file_ids = rng.permutation(total) * 3 + 7 if shuffled_ids else np.arange(total)
    batches = random_batches(fields, sizes, rng)
    for batch, n in zip(batches, sizes):
        batch["logits"] = rng.normal(size=(n, 6)).astype(np.float32)
    codecs = {"logits": TopK(2) if codec == "topk" else codec} if codec else None
    asked = data.draw(st.lists(st.integers(0, max(total - 1, 0)), max_size=12)) if total else []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k"
        with KnowledgeWriter(
            path if shard else path.with_suffix(".arrow"),
            max_shard_samples=shard,
            codecs=codecs,
            compression=compression,
        ) as w:
            start = 0
            for batch, n in zip(batches, sizes):
                w.write(batch, ids=file_ids[start : start + n])
                start += n
        target = path if shard else path.with_suffix(".arrow")
        ids, whole = read_all(target)
        with KnowledgeFile(target) as kf:
            np.testing.assert_array_equal(kf.sample_ids, ids)
            got = kf.take(file_ids[asked]) if total else kf.take([])
    np.testing.assert_array_equal(ids, file_ids)
    if not whole:  # every batch empty
        assert all(len(v) == 0 for v in got.values())
        return
    want = expected_rows(whole, asked)
    assert list(got) == list(want)
    for key in want:
        assert_same(got[key], want[key])


def test_a_contiguous_run_inside_one_batch_is_a_view_of_the_mapped_file(tmp_path):
    path = tmp_path / "k.arrow"
    batches = _toy_batches(3, size=8)
    write_batches(path, batches)
    with KnowledgeFile(path) as kf:
        ranges = list(_mapped_ranges(path))
        run = kf.take(range(9, 13))  # inside batch 1
        across = kf.take([6, 7, 8, 9])  # spans batches 0 and 1: copied
        shuffled = kf.take([12, 9, 10])
    for key in ("x", "logits"):
        value = run[key]
        assert not value.flags.writeable
        addr = value.__array_interface__["data"][0]
        assert any(lo <= addr and addr + value.nbytes <= hi for lo, hi in ranges), key
        assert across[key].flags.writeable
    assert run["x"].ravel().tolist() == [9, 10, 11, 12]
    assert across["x"].ravel().tolist() == [6, 7, 8, 9]
    assert shuffled["x"].ravel().tolist() == [12, 9, 10]
    assert_same(run["tok"], batches[1]["tok"].slice(1, 5))


def test_duplicates_any_order_and_tensors_and_numpy_ids(tmp_path):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(4, size=5))
    with KnowledgeFile(path) as kf:
        for ids in ([3, 3, 19, 0, 3], np.array([19, 0], np.int32), range(0)):
            got = kf.take(ids)
            assert got["x"].ravel().tolist() == list(ids)
            assert len(got["tok"]) == len(ids)
        torch = pytest.importorskip("torch")
        assert kf.take(torch.tensor([4, 2]))["x"].ravel().tolist() == [4, 2]


def test_ids_the_file_does_not_hold_are_named(tmp_path):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(2, size=4))
    with KnowledgeFile(path) as kf:
        with pytest.raises(KnowledgeError, match=r"sample id 8 not in .* ids 0\.\.7"):
            kf.take([1, 8])
        with pytest.raises(KnowledgeError, match=r"sample ids -1, 9, 10, 11, 12 \(and 1 more\)"):
            kf.take([-1, 9, 10, 11, 12, 13])
        with pytest.raises(ConfigError, match="1-D"):
            kf.take([[1, 2]])
        with pytest.raises(ConfigError, match="integers"):
            kf.take([1.5])
    with pytest.raises(ClosedError):
        kf.take([0])
    with pytest.raises(ClosedError):
        kf.sample_ids  # noqa: B018


def test_explicit_ids_duplicated_in_the_file_give_the_first(tmp_path):
    path = tmp_path / "k.arrow"
    with KnowledgeWriter(path) as w:
        w.write({"v": np.array([[10], [11], [12]])}, ids=[5, 1, 9])
        w.write({"v": np.array([[20], [21]])}, ids=[1, 100])
    with KnowledgeFile(path) as kf:
        assert kf.sample_ids.tolist() == [5, 1, 9, 1, 100]
        assert not kf.sample_ids.flags.writeable
        assert kf.take([100, 1, 5])["v"].ravel().tolist() == [21, 11, 10]
        with pytest.raises(KnowledgeError, match=r"sample id 2 not in .*from 1 to 100"):
            kf.take([2])


def test_a_cut_short_file_says_the_ids_were_lost(tmp_path):
    full = tmp_path / "full.arrow"
    write_batches(full, _toy_batches(3, size=4))
    _, ends = _message_ends(full)
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(full.read_bytes()[: ends[1] + 20])  # batch 2 incomplete
    with KnowledgeFile(cut) as kf:
        assert kf.sample_ids.tolist() == list(range(8))
        assert kf.take([7, 0])["x"].ravel().tolist() == [7, 0]
        with pytest.raises(KnowledgeError, match=r"cut short.*sample id 9 not in") as info:
            kf.take([9])
    assert "dump the knowledge again" in str(info.value)


def test_pickled_by_path_and_opened_again(tmp_path):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(2))
    with KnowledgeFile(path, sparse_topk=True) as kf:
        blob = pickle.dumps(kf)
        assert len(blob) < 200 + len(str(path))  # the path and two flags, no mapped bytes
        copy = pickle.loads(blob)
    with copy:
        assert copy.sparse_topk
        assert copy.take([5])["x"].ravel().tolist() == [5]


def test_to_arrow_is_the_stored_columns_on_the_mapped_file(tmp_path):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(3), use_fp16=True)
    with KnowledgeFile(path) as kf:
        ranges = list(_mapped_ranges(path))
        table = kf.to_arrow()
    assert table.schema.names == ["__sample_id__", "x", "logits", "tok"]
    assert table.column("logits").type == pa.list_(pa.float16(), 5)
    assert table.schema.metadata[b"pantheon.format"] == b"1"
    assert table.column("__sample_id__").to_pylist() == list(range(12))
    for chunk in table.column("logits").chunks:
        addr = chunk.values.buffers()[1].address
        assert any(lo <= addr < hi for lo, hi in ranges)


def test_fingerprints_are_stored_next_to_the_description(tmp_path):
    path = tmp_path / "k.arrow"
    with KnowledgeWriter(path, fingerprint="sha256:abc", dataset_fingerprint="imagenet-v2") as w:
        w.write({"x": np.zeros((2, 1))})
    with pa.memory_map(str(path)) as source:
        meta = pa.ipc.open_file(source).schema.metadata
    assert meta[b"pantheon.fingerprint"] == b"sha256:abc"
    assert meta[b"pantheon.dataset_fingerprint"] == b"imagenet-v2"
    with KnowledgeFile(path) as kf:
        assert kf.fingerprints == {
            "fingerprint": "sha256:abc",
            "dataset_fingerprint": "imagenet-v2",
        }
        assert (kf.fingerprint, kf.dataset_fingerprint) == ("sha256:abc", "imagenet-v2")
    write_batches(tmp_path / "old.arrow", _toy_batches(1))  # files without them still read
    with KnowledgeFile(tmp_path / "old.arrow") as kf:
        assert kf.fingerprints == {}
        assert kf.fingerprint is None
    assert FINGERPRINT_KEYS == ("fingerprint", "dataset_fingerprint")
    for bad in ("", 3, "x" * 1025):
        with pytest.raises(ConfigError, match="fingerprint"):
            KnowledgeWriter(tmp_path / "bad.arrow", fingerprint=bad)
