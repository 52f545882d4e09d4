"""Knowledge files: writing, reading, layout, codecs, shards, errors and cut-short files."""

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pantheon import (
    ClosedError,
    ConfigError,
    FileFormatError,
    KnowledgeError,
    Ragged,
    TruncatedFileError,
)
from pantheon._codecs import register_codec, registered_codecs
from pantheon._files import KnowledgeFile, KnowledgeWriter, batch_info
from pantheon._knowledge import DTYPE_NAMES, concat_values, to_dtype

# --------------------------------------------------------------------------- helpers


def _values(dtype_name, shape, rng):
    dtype = to_dtype(dtype_name)
    if dtype_name == "bool":
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, dtype=dtype)
    return rng.normal(size=shape).astype(dtype)


def assert_same(a, b):
    """Exactly equal values: same kind, dtype, shape and bytes (lengths for ragged)."""
    if isinstance(b, Ragged):
        assert isinstance(a, Ragged), f"expected a Ragged field, got {type(a)}"
        np.testing.assert_array_equal(a.lengths, b.lengths)
        a, b = a.values, b.values
    assert isinstance(a, np.ndarray)
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def read_all(path, start_sample=0, **kwargs):
    """(ids, data) of a whole file, chunks concatenated."""
    with KnowledgeFile(path, **kwargs) as kf:
        chunks = list(kf.iter_chunks(start_sample))
    if not chunks:
        return np.zeros(0, np.int64), {}
    ids = np.concatenate([c.ids for c in chunks])
    data = {k: concat_values([c.data[k] for c in chunks]) for k in chunks[0].data}
    return ids, data


def write_batches(path, batches, **kwargs):
    with KnowledgeWriter(path, **kwargs) as w:
        for b in batches:
            w.write(b)
    return w


def _toy_batches(n_batches=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        lengths = rng.integers(0, 4, size=size)
        out.append(
            {
                "x": np.arange(i * size, (i + 1) * size, dtype=np.int64).reshape(size, 1),
                "logits": rng.normal(size=(size, 5)).astype(np.float32),
                "tok": Ragged(
                    rng.integers(0, 9, size=int(lengths.sum())).astype(np.int32), lengths
                ),
            }
        )
    return out


def _expected(batches):
    return {k: concat_values([b[k] for b in batches]) for k in batches[0]}


def _rewrite_metadata(src, dst, update=None, drop=()):
    """Copy a knowledge file with its schema metadata changed (plain pyarrow)."""
    with pa.memory_map(str(src)) as m:
        table = pa.ipc.open_file(m).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    meta.update(update or {})
    for k in drop:
        meta.pop(k, None)
    table = table.replace_schema_metadata(meta)
    with pa.OSFile(str(dst), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def _message_ends(path):
    """Byte offset after the schema and after each record batch message of an IPC file."""
    data = Path(path).read_bytes()
    stream = pa.BufferReader(pa.py_buffer(data[8:]))
    reader = pa.ipc.MessageReader.open_stream(stream)
    ends = []
    while True:
        try:
            reader.read_next_message()
        except StopIteration:
            break
        ends.append(8 + stream.tell())
    return ends[0], ends[1:]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_every_dtype_round_trips(tmp_path, dtype):
    rng = np.random.default_rng(0)
    batches = [
        {"flat": _values(dtype, (n,), rng), "dense": _values(dtype, (n, 3), rng)} for n in (4, 2, 5)
    ]
    write_batches(tmp_path / "k.arrow", batches)
    ids, data = read_all(tmp_path / "k.arrow")
    np.testing.assert_array_equal(ids, np.arange(11))
    for key, want in _expected(batches).items():
        assert_same(data[key], want)
    with KnowledgeFile(tmp_path / "k.arrow") as kf:
        assert kf.desc == {
            "flat": {"shape": [-1], "dtype": dtype, "lod_level": 0},
            "dense": {"shape": [-1, 3], "dtype": dtype, "lod_level": 0},
        }


def test_multi_dim_dense_and_ragged_with_and_without_inner_dims(tmp_path):
    rng = np.random.default_rng(1)
    batches = []
    for n in (3, 1, 4):
        lengths = rng.integers(0, 5, size=n)
        batches.append(
            {
                "feat": rng.normal(size=(n, 2, 3, 4)).astype(np.float32),
                "tok": Ragged(rng.integers(0, 100, int(lengths.sum())), lengths),
                "hid": Ragged(
                    rng.normal(size=(int(lengths.sum()), 2, 3)).astype(np.float16), lengths
                ),
                "mask": Ragged.from_list([rng.random(int(m)) > 0.5 for m in lengths + 1]),
            }
        )
    write_batches(tmp_path / "k.arrow", batches)
    _, data = read_all(tmp_path / "k.arrow")
    for key, want in _expected(batches).items():
        assert_same(data[key], want)
    with KnowledgeFile(tmp_path / "k.arrow") as kf:
        desc = kf.desc
    assert desc["feat"] == {"shape": [-1, 2, 3, 4], "dtype": "float32", "lod_level": 0}
    assert desc["tok"] == {"shape": [-1, -1], "dtype": "int64", "lod_level": 1}
    assert desc["hid"] == {"shape": [-1, -1, 2, 3], "dtype": "float16", "lod_level": 1}
    assert desc["mask"] == {"shape": [-1, -1], "dtype": "bool", "lod_level": 1}


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_files_round_trip(tmp_path, compression):
    batches = _toy_batches(4)
    path = tmp_path / "k.arrow"
    write_batches(path, batches, compression=compression)
    ids, data = read_all(path)
    np.testing.assert_array_equal(ids, np.arange(16))
    for key, want in _expected(batches).items():
        assert_same(data[key], want)
    with KnowledgeFile(path) as kf:
        assert kf.compression == compression
        assert kf.num_samples == 16
        assert kf.batch_sizes() == [4, 4, 4, 4]


def test_uncompressed_by_default_and_bad_compression_is_refused(tmp_path):
    write_batches(tmp_path / "k.arrow", _toy_batches(1))
    with KnowledgeFile(tmp_path / "k.arrow") as kf:
        assert kf.compression is None
    with pytest.raises(ConfigError, match="lz4"):
        KnowledgeWriter(tmp_path / "x.arrow", compression="gzip")


def test_use_fp16_stores_float16_and_restores_the_dtype(tmp_path):
    rng = np.random.default_rng(2)
    x32 = rng.normal(size=(6, 10)).astype(np.float32)
    x64 = rng.normal(size=(6, 3))
    labels = np.arange(6)
    path = tmp_path / "k.arrow"
    write_batches(path, [{"x32": x32, "x64": x64, "labels": labels}], use_fp16=True)
    with KnowledgeFile(path) as kf:
        assert kf.desc["x32"]["dtype"] == "float32"
        assert kf.desc["x64"]["dtype"] == "float64"
        assert kf.codecs == {
            "x32": {"name": "cast", "dtype": "float16"},
            "x64": {"name": "cast", "dtype": "float16"},
        }
        assert kf.storage["x32"]["columns"][0]["dtype"] == "float16"
        (chunk,) = kf.iter_chunks()
    assert chunk.data["x32"].dtype == np.float32
    assert chunk.data["x64"].dtype == np.float64
    np.testing.assert_allclose(chunk.data["x32"], x32, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(chunk.data["x64"], x64, rtol=1e-3, atol=1e-4)
    assert_same(chunk.data["labels"], labels)
    with pa.memory_map(str(path)) as m:
        schema = pa.ipc.open_file(m).schema
    assert schema.field("x32").type == pa.list_(pa.float16(), 10)


def test_bf16_codec_and_a_ragged_cast(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 4)).astype(np.float32) * 1e6
    rag = Ragged(rng.normal(size=(7, 2)).astype(np.float32), [1, 0, 3, 2, 1])
    path = tmp_path / "k.arrow"
    write_batches(path, [{"x": x, "r": rag}], codecs={"x": "bf16", "r": "float16"})
    (chunk,) = KnowledgeFile(path).iter_chunks()
    assert chunk.data["x"].dtype == np.float32
    np.testing.assert_allclose(chunk.data["x"], x, rtol=1e-2)
    assert isinstance(chunk.data["r"], Ragged)
    np.testing.assert_array_equal(chunk.data["r"].lengths, rag.lengths)
    np.testing.assert_allclose(chunk.data["r"].values, rag.values, rtol=1e-3, atol=1e-3)
    with pa.memory_map(str(path)) as m:
        schema = pa.ipc.open_file(m).schema
    assert schema.field("x").type == pa.list_(pa.uint16(), 4)  # bfloat16 bit patterns


class _Halves:
    """A two-part codec: the lower and upper halves of the last axis."""

    def spec(self):
        return {"name": "test-store-halves"}

    def encode(self, value):
        k = value.shape[-1] // 2
        return {
            "lo": np.ascontiguousarray(value[..., :k]),
            "hi": np.ascontiguousarray(value[..., k:]),
        }

    def decode(self, parts, field):
        return np.concatenate([parts["lo"], parts["hi"]], axis=-1)


def test_a_codec_with_several_parts_gets_one_column_per_part(tmp_path):
    if "test-store-halves" not in registered_codecs():
        register_codec("test-store-halves", lambda spec: _Halves())
    x = np.arange(24.0).reshape(4, 6)
    path = tmp_path / "k.arrow"
    write_batches(path, [{"x": x, "y": np.ones((4, 1))}], codecs={"x": _Halves()})
    with pa.memory_map(str(path)) as m:
        names = pa.ipc.open_file(m).schema.names
    assert names == ["__sample_id__", "x@lo", "x@hi", "y"]
    (chunk,) = KnowledgeFile(path).iter_chunks()
    assert_same(chunk.data["x"], x)


def test_the_topk_codec_goes_through_a_file_by_name(tmp_path):
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(4, 64)).astype(np.float32)
    seq = Ragged(rng.normal(size=(5, 64)).astype(np.float32), [2, 0, 3, 0])
    path = tmp_path / "k.arrow"
    write_batches(path, [{"logits": logits, "seq": seq}], codecs={"logits": "topk", "seq": "topk"})
    with KnowledgeFile(path) as kf:
        assert [c["name"] for c in kf.storage["logits"]["columns"]] == [
            "logits@values",
            "logits@indices",
        ]
        assert kf.desc["logits"] == {"shape": [-1, 64], "dtype": "float32", "lod_level": 0}
        (chunk,) = kf.iter_chunks()
    dense = chunk.data["logits"]
    assert dense.shape == (4, 64)
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense.argmax(axis=1), logits.argmax(axis=1))
    assert isinstance(chunk.data["seq"], Ragged)
    np.testing.assert_array_equal(chunk.data["seq"].lengths, [2, 0, 3, 0])


def test_ids_default_to_a_running_count_and_explicit_ids_are_kept(tmp_path):
    path = tmp_path / "k.arrow"
    with KnowledgeWriter(path) as w:
        w.write({"x": np.zeros((3, 1))})
        w.write({"x": np.zeros((2, 1))}, ids=[100, 101])
        w.write({"x": np.zeros((2, 1))})
        w.write({"x": np.zeros((1, 1))}, ids=np.array([7], np.int32))
        assert (w.num_batches, w.num_samples) == (4, 8)
    ids, _ = read_all(path)
    np.testing.assert_array_equal(ids, [0, 1, 2, 100, 101, 102, 103, 7])
    assert ids.dtype == np.int64


@pytest.mark.parametrize("ids", [[1, 2], [[1, 2, 3]], [0.5, 1.5, 2.5]])
def test_ids_of_the_wrong_length_or_type_are_refused(tmp_path, ids):
    with KnowledgeWriter(tmp_path / "k.arrow") as w, pytest.raises(KnowledgeError, match="ids"):
        w.write({"x": np.zeros((3, 1))}, ids=ids)


def test_start_sample_skips_samples_exactly(tmp_path):
    batches = _toy_batches(4, size=3)
    path = tmp_path / "k.arrow"
    write_batches(path, batches)
    want = _expected(batches)
    for start in range(0, 13):
        ids, data = read_all(path, start_sample=start)
        np.testing.assert_array_equal(ids, np.arange(start, 12))
        if start == 12:
            assert data == {}
            continue
        assert_same(data["x"], want["x"][start:])
        assert_same(data["tok"], want["tok"].slice(start, 12))
    with KnowledgeFile(path) as kf, pytest.raises(ConfigError):
        next(kf.iter_chunks(-1))


def test_start_sample_skips_whole_batches_without_decoding_them(tmp_path):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(3), compression="zstd")
    schema_end, ends = _message_ends(path)
    raw = bytearray(path.read_bytes())
    body = raw[schema_end : ends[0]]
    zstd_magic = b"\x28\xb5\x2f\xfd"
    assert body.count(zstd_magic) >= 1
    raw[schema_end : ends[0]] = body.replace(zstd_magic, b"\0\0\0\0")  # break batch 0's frames
    path.write_bytes(bytes(raw))
    with KnowledgeFile(path) as kf:
        assert kf.truncated is None
        with pytest.raises(FileFormatError, match="batch 0 cannot be decoded"):
            list(kf.iter_chunks(0))
        chunks = list(kf.iter_chunks(4))  # batch 0 is skipped, never decoded
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), np.arange(4, 12))


def test_empty_batches_are_written_and_skipped_when_reading(tmp_path):
    path = tmp_path / "k.arrow"
    with KnowledgeWriter(path) as w:
        w.write({"x": np.zeros((0, 2), np.float32)})
        w.write({"x": np.ones((2, 2), np.float32)})
    with KnowledgeFile(path) as kf:
        assert kf.batch_sizes() == [0, 2]
        chunks = list(kf.iter_chunks())
    assert [len(c.ids) for c in chunks] == [2]


def test_metadata_version_sizes_and_bytes(tmp_path):
    import pantheon

    path = tmp_path / "sub" / "dir" / "k.arrow"  # parents are created
    write_batches(path, _toy_batches(2), metadata={"teacher": "resnet50", "epoch": "3"})
    with KnowledgeFile(path) as kf:
        assert kf.metadata == {"teacher": "resnet50", "epoch": "3"}
        assert kf.version == pantheon.__version__
        assert kf.nbytes == path.stat().st_size
        assert kf.num_batches == 2
        assert kf.shards == [path]
        assert kf.truncated is None
        assert "8 samples" in repr(kf)
    with pytest.raises(ConfigError, match="metadata"):
        KnowledgeWriter(tmp_path / "x.arrow", metadata={"n": 3})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- zero copy


def _mapped_ranges(path):
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                yield lo, hi


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_uncompressed_fields_are_views_of_the_memory_mapped_file(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "k.arrow"
    batch = {
        "logits": rng.normal(size=(64, 100)).astype(np.float32),
        "flags": rng.random((64, 3)) > 0.5,
        "bf": rng.normal(size=(64, 8)).astype(ml_dtypes.bfloat16),
    }
    write_batches(path, [batch, batch])
    with KnowledgeFile(path) as kf:
        ranges = list(_mapped_ranges(path))
        assert ranges, "the knowledge file is not memory-mapped"
        chunks = list(kf.iter_chunks())
        again = list(kf.iter_chunks())
    for key in batch:
        value = chunks[1].data[key]
        assert value.dtype == batch[key].dtype
        assert not value.flags.owndata
        assert not value.flags.writeable
        addr = value.__array_interface__["data"][0]
        assert any(lo <= addr and addr + value.nbytes <= hi for lo, hi in ranges), key
        assert np.shares_memory(value, again[1].data[key])
        assert_same(value, batch[key])
    # arrays read stay valid after close
    assert_same(chunks[0].data["logits"], batch["logits"])


# --------------------------------------------------------------------------- plain pyarrow


def test_a_file_reads_with_plain_pyarrow(tmp_path):
    batches = _toy_batches(2)
    path = tmp_path / "k.arrow"
    write_batches(path, batches)
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        meta = reader.schema.metadata
        desc = json.loads(meta[b"pantheon.desc"])
        assert meta[b"pantheon.format"] == b"1"
        table = reader.read_all()
    assert list(desc) == ["x", "logits", "tok"]
    assert table.column_names == ["__sample_id__", "x", "logits", "tok"]
    want = _expected(batches)
    np.testing.assert_array_equal(table["__sample_id__"].to_numpy(), np.arange(8))
    logits = table["logits"].combine_chunks().flatten().to_numpy().reshape(-1, 5)
    np.testing.assert_array_equal(logits, want["logits"])
    tok = table["tok"].to_pylist()
    assert [len(t) for t in tok] == list(want["tok"].lengths)
    np.testing.assert_array_equal(
        np.concatenate([np.array(t, np.int32) for t in tok]), want["tok"].values
    )


# --------------------------------------------------------------------------- shards


def test_shards_split_at_batch_boundaries_and_read_as_one_stream(tmp_path):
    batches = _toy_batches(5, size=4)
    out = tmp_path / "shards"
    w = write_batches(out, batches, max_shard_samples=6)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["part-00000.arrow", "part-00001.arrow", "part-00002.arrow"]
    assert w.shards == [out / n for n in names]
    for p in out.iterdir():  # every shard is complete (footer written)
        with pa.memory_map(str(p)) as m:
            assert pa.ipc.open_file(m).num_record_batches in (1, 2)
    with KnowledgeFile(out) as kf:
        assert kf.shards == [out / n for n in names]
        assert kf.batch_sizes() == [4] * 5
        assert kf.nbytes == sum(p.stat().st_size for p in out.iterdir())
    ids, data = read_all(out, start_sample=5)
    np.testing.assert_array_equal(ids, np.arange(5, 20))
    assert_same(data["tok"], _expected(batches)["tok"].slice(5, 20))


def test_a_new_sharded_dump_removes_stale_shards(tmp_path):
    out = tmp_path / "shards"
    write_batches(out, _toy_batches(6, size=2), max_shard_samples=2)
    assert len(list(out.iterdir())) == 6
    write_batches(out, _toy_batches(2, size=2), max_shard_samples=2)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.arrow", "part-00001.arrow"]
    assert KnowledgeFile(out).num_samples == 4


def test_shards_with_different_descriptions_are_refused(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    write_batches(out / "part-00000.arrow", [{"x": np.zeros((2, 1))}])
    write_batches(out / "part-00001.arrow", [{"x": np.zeros((2, 2))}])
    with pytest.raises(FileFormatError, match=r"part-00001\.arrow.*differs"):
        KnowledgeFile(out)


def test_a_directory_without_shards_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileFormatError, match="without shards"):
        KnowledgeFile(tmp_path)


def test_a_last_shard_cut_before_its_first_batch_is_a_truncation(tmp_path):
    out = tmp_path / "shards"
    write_batches(out, _toy_batches(3, size=2), max_shard_samples=2)
    last = out / "part-00002.arrow"
    last.write_bytes(last.read_bytes()[:8])
    with KnowledgeFile(out) as kf:
        assert kf.num_samples == 4
        assert kf.truncated is not None
        assert kf.truncated.path == str(last)
    (out / "part-00001.arrow").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        KnowledgeFile(out)


def test_sharding_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="max_shard_samples"):
        KnowledgeWriter(tmp_path / "d", max_shard_samples=0)
    (tmp_path / "f.arrow").write_bytes(b"x")
    with pytest.raises(ConfigError, match="directory"):
        KnowledgeWriter(tmp_path / "f.arrow", max_shard_samples=4)
    with pytest.raises(ConfigError, match="directory"):
        KnowledgeWriter(tmp_path)


# --------------------------------------------------------------------------- writer errors


def test_changed_keys_dtypes_or_shapes_are_refused_naming_the_key(tmp_path):
    with KnowledgeWriter(tmp_path / "k.arrow") as w:
        w.write({"a": np.zeros((2, 3), np.float32), "b": np.zeros((2,), np.int64)})
        with pytest.raises(KnowledgeError, match=r"missing \['b'\]"):
            w.write({"a": np.zeros((2, 3), np.float32)})
        with pytest.raises(KnowledgeError, match=r"'a' has dtype 'float64', expected 'float32'"):
            w.write({"a": np.zeros((2, 3)), "b": np.zeros((2,), np.int64)})
        with pytest.raises(KnowledgeError, match=r"'a' has shape \[-1, 4\], expected \[-1, 3\]"):
            w.write({"a": np.zeros((2, 4), np.float32), "b": np.zeros((2,), np.int64)})
        with pytest.raises(KnowledgeError, match="'b' has lod_level 1"):
            w.write({"a": np.zeros((2, 3), np.float32), "b": [np.zeros(1, np.int64)] * 2})
        w.write({"a": np.ones((1, 3), np.float32), "b": np.ones((1,), np.int64)})  # still usable
    assert KnowledgeFile(tmp_path / "k.arrow").num_samples == 3


def test_write_after_close_and_close_twice(tmp_path):
    w = KnowledgeWriter(tmp_path / "k.arrow")
    w.write({"x": np.zeros((1, 1))})
    w.close()
    w.close()
    assert w.closed
    with pytest.raises(ClosedError, match="after close"):
        w.write({"x": np.zeros((1, 1))})


def test_a_writer_closed_before_any_batch_writes_nothing(tmp_path):
    with KnowledgeWriter(tmp_path / "k.arrow") as w:
        assert w.desc is None
    assert not (tmp_path / "k.arrow").exists()


def test_the_sample_id_column_name_is_reserved(tmp_path):
    with (
        KnowledgeWriter(tmp_path / "k.arrow") as w,
        pytest.raises(KnowledgeError, match="reserved"),
    ):
        w.write({"__sample_id__": np.zeros((1, 1))})


def test_a_key_clashing_with_a_codec_part_is_refused(tmp_path):
    if "test-store-halves" not in registered_codecs():
        register_codec("test-store-halves", lambda spec: _Halves())
    w = KnowledgeWriter(tmp_path / "k.arrow", codecs={"x": "test-store-halves"})
    with w, pytest.raises(KnowledgeError, match="clashes"):
        w.write({"x": np.zeros((1, 4)), "x@lo": np.zeros((1, 1))})


def test_a_cast_of_an_integer_key_is_refused_at_the_first_write(tmp_path):
    w = KnowledgeWriter(tmp_path / "k.arrow", codecs={"ids": "float16"})
    with w, pytest.raises(ConfigError, match="'ids'"):
        w.write({"ids": np.zeros((1, 1), np.int64)})


# --------------------------------------------------------------------------- reader errors


def test_missing_empty_and_garbage_files(tmp_path):
    with pytest.raises(FileFormatError, match="no such knowledge file"):
        KnowledgeFile(tmp_path / "nope.arrow")
    (tmp_path / "empty.arrow").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        KnowledgeFile(tmp_path / "empty.arrow")
    (tmp_path / "junk.arrow").write_bytes(os.urandom(1000))
    with pytest.raises(FileFormatError, match="not an Arrow IPC file"):
        KnowledgeFile(tmp_path / "junk.arrow")
    (tmp_path / "text.arrow").write_text("ARROW")
    with pytest.raises(FileFormatError, match="cut short inside the 8-byte file header"):
        KnowledgeFile(tmp_path / "text.arrow")


def test_an_arrow_file_that_is_not_a_knowledge_file(tmp_path):
    table = pa.table({"a": [1, 2, 3]})
    with (
        pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as w,
    ):
        w.write_table(table)
    with pytest.raises(FileFormatError, match="not a Pantheon knowledge file"):
        KnowledgeFile(tmp_path / "t.arrow")


@pytest.mark.parametrize(
    ("update", "drop", "match"),
    [
        ({"pantheon.desc": "{not json"}, (), "unreadable"),
        ({"pantheon.desc": "[1, 2]"}, (), "non-empty JSON object"),
        (
            {"pantheon.desc": '{"x": {"shape": [-1, 1], "dtype": "complex64", "lod_level": 0}}'},
            (),
            "dtype",
        ),
        ({"pantheon.format": "7"}, (), "format '7'"),
        ({}, ("pantheon.storage",), "pantheon.storage"),
        (
            {"pantheon.storage": '{"x": {"codec": {"name": "nope"}, "columns": []}}'},
            (),
            "unknown codec",
        ),
        ({"pantheon.storage": '{"x": {"codec": null, "columns": []}}'}, (), "no columns"),
        (
            {"pantheon.desc": '{"x": {"shape": [-1, 2], "dtype": "float64", "lod_level": 0}}'},
            (),
            "shape differs",
        ),
    ],
)
def test_corrupt_metadata_is_a_file_format_error(tmp_path, update, drop, match):
    src = tmp_path / "k.arrow"
    write_batches(src, [{"x": np.zeros((2, 1))}])
    _rewrite_metadata(src, tmp_path / "bad.arrow", update, drop)
    with pytest.raises(FileFormatError, match=match):
        KnowledgeFile(tmp_path / "bad.arrow")


def test_columns_that_do_not_match_the_metadata_are_refused(tmp_path):
    table = pa.table({"__sample_id__": pa.array([0, 1], pa.int64()), "x": pa.array([1.0, 2.0])})
    good = tmp_path / "k.arrow"
    write_batches(good, [{"x": np.zeros((2, 3))}])
    with pa.memory_map(str(good)) as m:
        meta = pa.ipc.open_file(m).schema.metadata
    table = table.replace_schema_metadata(meta)
    with (
        pa.OSFile(str(tmp_path / "bad.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as w,
    ):
        w.write_table(table)
    with pytest.raises(FileFormatError, match="do not match"):
        KnowledgeFile(tmp_path / "bad.arrow")


def _crafted(tmp_path, column, desc_shape=None):
    """A float16-cast file of ``x`` whose stored column is renamed to part ``column``, or
    whose description claims another shape: what a hand-made or corrupt file may hold."""
    src = tmp_path / "k.arrow"
    with KnowledgeWriter(src, codecs={"x": "float16"}) as w:
        w.write({"x": np.ones((4, 3), np.float32)})
    with pa.memory_map(str(src)) as m:
        table = pa.ipc.open_file(m).read_all()
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    storage, desc = json.loads(meta["pantheon.storage"]), json.loads(meta["pantheon.desc"])
    name = f"x@{column}" if column else "x"
    storage["x"]["columns"][0].update(part=column, name=name)
    if desc_shape is not None:
        desc["x"]["shape"] = desc_shape
    meta.update({"pantheon.storage": json.dumps(storage), "pantheon.desc": json.dumps(desc)})
    table = pa.table({"__sample_id__": table.column(0), name: table.column(1)})
    table = table.replace_schema_metadata(meta)
    bad = tmp_path / "bad.arrow"
    with pa.OSFile(str(bad), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return bad


def test_a_part_its_codec_does_not_know_is_a_file_format_error(tmp_path):
    """The float16 cast reads part ``""``: a column of another part name gave a bare
    ``KeyError`` when read."""
    with KnowledgeFile(_crafted(tmp_path, "foo")) as kf:
        with pytest.raises(FileFormatError, match="no stored part '' for its codec"):
            next(kf.iter_chunks())
        with pytest.raises(FileFormatError, match="no stored part"):
            kf.take([0])


def test_a_stored_column_of_another_shape_than_described_is_a_file_format_error(tmp_path):
    """The description said [-1, 7] and the float16 column held 3 values per sample: the
    values came back (4, 3), silently, under a description of 7."""
    with KnowledgeFile(_crafted(tmp_path, "", desc_shape=[-1, 7])) as kf:
        assert kf.desc["x"]["shape"] == [-1, 7]
        with pytest.raises(FileFormatError, match=r"shape \[-1, 3\], expected \[-1, 7\]"):
            next(kf.iter_chunks())


def test_reading_after_close_raises(tmp_path):
    write_batches(tmp_path / "k.arrow", _toy_batches(2))
    kf = KnowledgeFile(tmp_path / "k.arrow")
    chunks = kf.iter_chunks()
    next(chunks)
    kf.close()
    kf.close()
    with pytest.raises(ClosedError):
        next(chunks)
    with pytest.raises(ClosedError):
        next(kf.iter_chunks())


# --------------------------------------------------------------------------- cut-short files


@pytest.mark.parametrize("compression", [None, "lz4"])
def test_files_cut_at_many_offsets_read_their_complete_batches(tmp_path, compression):
    batches = _toy_batches(4, size=3)
    full = tmp_path / "full.arrow"
    write_batches(full, batches, compression=compression)
    data = full.read_bytes()
    _, ends = _message_ends(full)
    want = _expected(batches)
    cut = tmp_path / "cut.arrow"
    # every 3rd byte, every byte around message boundaries and the whole footer
    sizes = set(range(0, len(data), 3)) | set(range(len(data) - 64, len(data)))
    sizes |= {e + d for e in [8, *ends] for d in range(-3, 4)}
    sizes = sorted(s for s in sizes if 0 <= s < len(data))
    seen_errors = seen_truncated = 0
    for size in sizes:
        cut.write_bytes(data[:size])
        if size < ends[0]:  # no complete batch: refused, saying why
            with pytest.raises(FileFormatError, match=r"cut short|empty") as info:
                KnowledgeFile(cut)
            assert not isinstance(info.value, TruncatedFileError)
            seen_errors += 1
            continue
        kf = KnowledgeFile(cut)
        with kf:
            complete = sum(e <= size for e in ends)
            assert complete >= 1
            assert kf.truncated is not None, size
            assert kf.truncated.complete_batches == complete
            assert kf.truncated.complete_samples == 3 * complete
            assert kf.truncated.offset == ends[complete - 1]
            assert kf.truncated.path == str(cut)
            assert kf.num_batches == complete
            chunks = list(kf.iter_chunks())
        got = concat_values([c.data["tok"] for c in chunks])
        assert_same(got, want["tok"].slice(0, 3 * complete))
        seen_truncated += 1
    assert seen_errors == sum(s < ends[0] for s in sizes)
    assert seen_truncated == sum(s >= ends[0] for s in sizes)
    with KnowledgeFile(full) as kf:
        assert kf.truncated is None


def test_truncation_is_logged_once_and_can_be_refused(tmp_path, caplog):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(3))
    path.write_bytes(path.read_bytes()[:-20])
    with caplog.at_level("WARNING", logger="pantheon"):
        kf = KnowledgeFile(path)
    kf.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "cut short" in warnings[0].getMessage()
    with pytest.raises(TruncatedFileError) as info:
        KnowledgeFile(path, allow_truncated=False)
    assert info.value.complete_batches == 3
    assert info.value.complete_samples == 12
    assert info.value.path == str(path)


def test_a_file_cut_inside_the_schema_or_before_a_batch_says_so(tmp_path):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(1))
    schema_end, _ = _message_ends(path)
    data = path.read_bytes()
    path.write_bytes(data[: schema_end - 10])
    with pytest.raises(FileFormatError, match="inside the schema"):
        KnowledgeFile(path)
    path.write_bytes(data[: schema_end + 10])
    with pytest.raises(FileFormatError, match="before its first complete batch"):
        KnowledgeFile(path)


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_flipped_bytes_read_or_raise_file_format_errors_only(tmp_path, compression):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(3), compression=compression)
    data = path.read_bytes()
    rng = np.random.default_rng(5)
    bad = tmp_path / "bad.arrow"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(300):
        flipped = bytearray(data)
        for at in rng.integers(0, len(data), size=rng.integers(1, 4)):
            flipped[at] = rng.integers(0, 256)
        bad.write_bytes(bytes(flipped))
        try:
            with KnowledgeFile(bad) as kf:
                for _chunk in kf.iter_chunks():
                    pass
            outcomes["read"] += 1
        except FileFormatError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


_CHILD = r"""
import sys
import numpy as np
from pantheon._files import KnowledgeWriter

w = KnowledgeWriter(sys.argv[1])
for i in range(200000):
    w.write({"x": np.full((4, 8), i, np.float32), "tok": [np.arange(j + 1) for j in range(4)]})
    print(i, flush=True)
"""


def _read_lines(pipe, count, timeout):
    sel = selectors.DefaultSelector()
    sel.register(pipe, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while buf.count(b"\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError(f"the writer printed only {buf!r} in {timeout} s")
            data = os.read(pipe.fileno(), 4096)
            if not data:
                raise EOFError(f"the writer exited after printing {buf!r}")
            buf += data
    finally:
        sel.close()
    return buf.decode().split()


def test_a_killed_writer_leaves_a_readable_file(tmp_path):
    path = tmp_path / "killed.arrow"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        lines = _read_lines(proc.stdout, 3, timeout=60)
    except (TimeoutError, EOFError) as exc:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"{exc}; stderr: {err.decode()[-2000:]}")
    proc.kill()  # SIGKILL: no footer, maybe half a batch
    proc.communicate(timeout=30)
    assert proc.returncode == -9
    assert len(lines) >= 3
    with KnowledgeFile(path) as kf:
        assert kf.truncated is not None
        assert kf.num_batches >= 3
        for i, chunk in enumerate(kf.iter_chunks()):
            assert (chunk.data["x"] == i).all()
            np.testing.assert_array_equal(chunk.ids, np.arange(4 * i, 4 * i + 4))
            np.testing.assert_array_equal(chunk.data["tok"].lengths, [1, 2, 3, 4])


# --------------------------------------------------------------------------- properties


def test_batch_info_agrees_with_pyarrow(tmp_path):
    path = tmp_path / "k.arrow"
    write_batches(path, _toy_batches(2, size=5) + _toy_batches(1, size=1), compression="zstd")
    data = path.read_bytes()
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(pa.py_buffer(data[8:])))
    schema = pa.ipc.read_schema(reader.read_next_message())
    for want in (5, 5, 1):
        msg = reader.read_next_message()
        assert batch_info(msg.metadata.to_pybytes()) == (want, "zstd")
        assert pa.ipc.read_record_batch(msg, schema).num_rows == want


def random_batches(fields, sizes, rng):
    """Batches of ``sizes`` samples with one key ``k<i>`` per ``(dtype, lod, inner)`` field."""
    batches = []
    for n in sizes:
        batch = {}
        for i, (dtype, lod, inner) in enumerate(fields):
            if lod:
                lengths = rng.integers(0, 4, size=n)
                batch[f"k{i}"] = Ragged(_values(dtype, (int(lengths.sum()), *inner), rng), lengths)
            else:
                batch[f"k{i}"] = _values(dtype, (n, *inner), rng)
        batches.append(batch)
    return batches


_FIELD = st.tuples(
    st.sampled_from(DTYPE_NAMES),
    st.sampled_from([0, 1]),
    st.lists(st.integers(1, 3), max_size=2).map(tuple),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.lists(_FIELD, min_size=1, max_size=3),
    sizes=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    compression=st.sampled_from([None, "lz4", "zstd"]),
    seed=st.integers(0, 2**32 - 1),
    start=st.integers(0, 25),
)
def test_random_batches_round_trip(fields, sizes, compression, seed, start):
    batches = random_batches(fields, sizes, np.random.default_rng(seed))
    total = sum(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.arrow"
        write_batches(path, batches, compression=compression)
        ids, data = read_all(path, start_sample=start)
        with KnowledgeFile(path) as kf:
            assert kf.batch_sizes() == sizes
            assert kf.num_samples == total
    np.testing.assert_array_equal(ids, np.arange(start, max(total, start)))
    if start >= total:
        assert data == {}
        return
    for key, want in _expected(batches).items():
        want = want.slice(start, total) if isinstance(want, Ragged) else want[start:]
        assert_same(data[key], want)
