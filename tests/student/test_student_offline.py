"""The student reading offline teachers: merging, re-batching, alignment, resume, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pantheon import (
    AlignmentError,
    ClosedError,
    ConfigError,
    FileFormatError,
    KnowledgeError,
    MergeError,
    Ragged,
    Student,
    Teacher,
)


def _dump(path, n=100, batch=10, scale=1.0, **teacher_kw):
    with Teacher(out_path=path, **teacher_kw) as t:
        t.start()
        for s in range(0, n, batch):
            x = np.arange(s, min(s + batch, n))
            t.dump(
                {
                    "x": x.reshape(-1, 1),
                    "logits": (np.outer(x, np.ones(4)) * scale).astype(np.float32),
                }
            )
    return path


def _collect(student, batch_size, **kw):
    return list(student.get_knowledge_generator(batch_size, **kw)())


def test_two_teachers_with_different_batch_sizes_merge_and_rebatch(tmp_path):
    a = _dump(tmp_path / "a.arrow", batch=7)
    b = _dump(tmp_path / "b.arrow", batch=33, scale=3.0)
    with Student(merge_strategy={"x": "max", "logits": "mean"}) as s:
        assert s.register_teacher(in_path=a) == 0
        assert s.register_teacher(in_path=b) == 1
        s.start()
        assert s.get_knowledge_desc() == {
            "x": {"shape": [-1, 1], "dtype": "int64", "lod_level": 0},
            "logits": {"shape": [-1, 4], "dtype": "float32", "lod_level": 0},
        }
        batches = _collect(s, 32)
    assert [len(b["x"]) for b in batches] == [32, 32, 32, 4]
    x = np.concatenate([b["x"].ravel() for b in batches])
    logits = np.concatenate([b["logits"] for b in batches])
    assert np.array_equal(x, np.arange(100))
    assert np.allclose(logits, np.outer(np.arange(100), np.ones(4)) * 2.0)


def test_drop_last_and_rounds_replay_the_file(tmp_path):
    a = _dump(tmp_path / "a.arrow")
    with Student() as s:
        s.register_teacher(in_path=a)
        s.start()
        assert [len(b["x"]) for b in _collect(s, 32, drop_last=True)] == [32, 32, 32]
        assert sum(len(b["x"]) for b in _collect(s, 50)) == 100
        assert s.stats()["rounds"] == 2


def test_misaligned_teachers_name_teacher_and_first_bad_id(tmp_path):
    a = _dump(tmp_path / "a.arrow")
    with Teacher(out_path=tmp_path / "b.arrow") as t:
        ids = np.arange(100)
        ids[57] = 999
        t.dump({"y": np.zeros((100, 1))}, ids=ids)
    with Student() as s:
        s.register_teacher(in_path=a)
        s.register_teacher(in_path=tmp_path / "b.arrow")
        s.start()
        with pytest.raises(
            AlignmentError,
            match=r"teacher 1 .* position 57 .* sample id 999 where teacher 0 .* has 57",
        ):
            _collect(s, 16)


def test_teacher_with_fewer_samples_is_named(tmp_path):
    a = _dump(tmp_path / "a.arrow", n=100)
    b = _dump(tmp_path / "b.arrow", n=90)
    with Student(merge_strategy={"x": "sum", "logits": "sum"}) as s:
        s.register_teacher(in_path=a)
        s.register_teacher(in_path=b)
        s.start()
        with pytest.raises(AlignmentError, match="teacher 1 .* ended its round after 90 samples"):
            _collect(s, 32)


def test_state_dict_resumes_a_round_exactly(tmp_path):
    a = _dump(tmp_path / "a.arrow", n=200, batch=9)
    with Student() as s:
        s.register_teacher(in_path=a)
        s.start()
        seen = []
        for i, b in enumerate(s.get_knowledge_generator(25)()):
            seen.append(b["x"].ravel())
            if i == 2:
                break
        state = s.state_dict()
    assert state["round"] == 0 and state["sample_in_round"] == 75
    with Student() as s2:
        s2.register_teacher(in_path=a)
        s2.load_state_dict(state)
        s2.start()
        seen += [b["x"].ravel() for b in s2.get_knowledge_generator(25)()]
        assert s2.state_dict()["round"] == 1
    assert np.array_equal(np.concatenate(seen), np.arange(200))


def test_qsize_counts_batches_read_ahead(tmp_path):
    a = _dump(tmp_path / "a.arrow", n=400, batch=10)
    with Student(read_ahead=4) as s:
        s.register_teacher(in_path=a)
        s.start()
        it = s.get_knowledge_generator(10)()
        next(it)
        deadline = time.monotonic() + 10
        while s.get_knowledge_qsize() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.get_knowledge_qsize() == 4
        it.close()


def test_fp16_is_stored_small_and_cast_back(tmp_path):
    a = _dump(tmp_path / "a.arrow", use_fp16=True, scale=0.1)
    with Student() as s:
        s.register_teacher(in_path=a)
        s.start()
        assert s.get_knowledge_desc()["logits"]["dtype"] == "float32"
        logits = np.concatenate([b["logits"] for b in _collect(s, 64)])
    assert logits.dtype == np.float32
    assert np.allclose(logits, np.outer(np.arange(100), np.ones(4)) * 0.1, rtol=1e-3)


def test_ragged_knowledge_in_three_formats(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=40)
    seqs = [rng.standard_normal((n, 3)).astype(np.float32) for n in lengths]
    with Teacher(out_path=tmp_path / "r.arrow") as t:
        for s in range(0, 40, 6):
            t.dump({"tokens": seqs[s : s + 6]})
    with Student() as st:
        st.register_teacher(in_path=tmp_path / "r.arrow")
        st.start()
        assert st.get_knowledge_desc()["tokens"] == {
            "shape": [-1, -1, 3],
            "dtype": "float32",
            "lod_level": 1,
        }
        rag = _collect(st, 16)[0]["tokens"]
        assert isinstance(rag, Ragged) and rag.lengths.tolist() == lengths[:16].tolist()
        padded, lens = _collect(st, 16, ragged="padded")[0]["tokens"]
        assert padded.shape == (16, int(lengths[:16].max()), 3)
        assert np.array_equal(padded[0, : lens[0]], seqs[0])
        as_list = _collect(st, 16, ragged="list")[0]["tokens"]
        assert all(np.array_equal(a, b) for a, b in zip(as_list, seqs[:16]))


def test_a_directory_of_shards_reads_as_one_stream(tmp_path):
    _dump(tmp_path / "shards", n=100, batch=10, max_shard_samples=30)
    assert len(list((tmp_path / "shards").glob("*.arrow"))) == 4
    with Student() as s:
        s.register_teacher(in_path=tmp_path / "shards")
        s.start()
        x = np.concatenate([b["x"].ravel() for b in _collect(s, 32)])
    assert np.array_equal(x, np.arange(100))


@pytest.mark.parametrize("bad", [0, -3, 1.5, None])
def test_bad_batch_size(tmp_path, bad):
    with Student() as s:
        s.register_teacher(in_path=_dump(tmp_path / "a.arrow"))
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            s.get_knowledge_generator(bad)


def test_shared_key_without_strategy_and_unknown_strategy(tmp_path):
    a = _dump(tmp_path / "a.arrow")
    with Student() as s:
        s.register_teacher(in_path=a)
        s.register_teacher(in_path=a)
        with pytest.raises(
            MergeError, match=r"'x' is produced by 2 teachers \(teacher 0 .*teacher 1"
        ):
            s.get_knowledge_desc()
    with Student(merge_strategy={"x": "median", "logits": "sum"}) as s:
        s.register_teacher(in_path=a)
        s.register_teacher(in_path=a)
        with pytest.raises(MergeError, match="unknown merge strategy 'median'"):
            s.get_knowledge_desc()


def test_register_teacher_and_teacher_argument_errors(tmp_path):
    with Student() as s:
        with pytest.raises(ConfigError, match="exactly one of in_path"):
            s.register_teacher()
        with pytest.raises(ConfigError, match="exactly one of in_path"):
            s.register_teacher(in_path="a", in_address="127.0.0.1:1")
        with pytest.raises(ConfigError, match="no teacher registered"):
            s.start()
    with pytest.raises(ValueError, match="exactly one of out_path"):
        Teacher()
    with pytest.raises(ValueError, match="exactly one of out_path"):
        Teacher(out_path=tmp_path / "x.arrow", out_port=0)


def test_missing_and_garbage_files(tmp_path):
    with Student() as s:
        s.register_teacher(in_path=tmp_path / "nope.arrow")
        with pytest.raises(FileFormatError, match="nope.arrow"):
            s.start()
    (tmp_path / "junk.arrow").write_bytes(b"not arrow at all" * 10)
    with Student() as s:
        s.register_teacher(in_path=tmp_path / "junk.arrow")
        with pytest.raises(FileFormatError, match="junk.arrow"):
            s.start()


def test_dump_errors(tmp_path):
    t = Teacher(out_path=tmp_path / "a.arrow")
    t.start()
    t.dump({"x": np.zeros((2, 3), np.float32)})
    with pytest.raises(KnowledgeError, match=r"'x' has dtype 'float64', expected 'float32'"):
        t.dump({"x": np.zeros((2, 3))})
    with pytest.raises(KnowledgeError, match="'a': 2, 'b': 3"):
        t.dump({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})
    with pytest.raises(KnowledgeError, match="expected a numpy array"):
        t.dump({"x": "text"})
    t.close()
    with pytest.raises(ClosedError):
        t.dump({"x": np.zeros((2, 3), np.float32)})


def test_send_recv_are_online_only(tmp_path):
    with Teacher(out_path=tmp_path / "a.arrow") as t, pytest.raises(ConfigError, match="online"):
        t.send(1)
