"""The knowledge service core: readers, programs, ordered multi-worker prediction."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pantheon import ConfigError, KnowledgeError, Ragged, WorkerError
from pantheon._knowledge import Chunk
from pantheon._service import ServiceSpec
from tests.helpers import query_handler, round_factory

N = 10


def samples_tuple() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(N):
        yield (np.array([i], dtype=np.int64), np.full(3, i, dtype=np.float32))


def samples_dict() -> Iterator[dict[str, Any]]:
    for x, f in samples_tuple():
        yield {"f": f, "x": x}


def double(x: np.ndarray, f: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": 2 * x - 1, "g": f + 0.5}


def collect(it: Iterator[Chunk]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    chunks = list(it)
    ids = np.concatenate([c.ids for c in chunks])
    keys = chunks[0].data.keys()
    data = {k: np.concatenate([np.asarray(c.data[k]) for c in chunks]) for k in keys}
    return ids, data


SCHEMA = {"x": "x", "2x-1": "y", "g": "g"}


# ---- readers -------------------------------------------------------------------------------
@pytest.mark.parametrize("gen", [samples_tuple, samples_dict])
@pytest.mark.parametrize(("drop_last", "sizes"), [(True, [4, 4]), (False, [4, 4, 2])])
def test_sample_generator(gen: Any, drop_last: bool, sizes: list[int]) -> None:
    cfg = {"sample_generator": gen, "batch_size": 4, "drop_last": drop_last}
    make_round = round_factory(["x", "f"], SCHEMA, double, cfg)
    chunks = list(make_round(0))
    assert [len(c.ids) for c in chunks] == sizes
    ids, data = collect(iter(chunks))
    n = sum(sizes)
    np.testing.assert_array_equal(ids, np.arange(n))
    assert list(data) == ["x", "2x-1", "g"]
    np.testing.assert_array_equal(data["x"], np.arange(n).reshape(-1, 1))
    np.testing.assert_array_equal(data["2x-1"], 2 * np.arange(n).reshape(-1, 1) - 1)
    assert data["g"].shape == (n, 3)
    assert data["g"].dtype == np.float32
    assert ids.dtype == np.int64


def test_drop_last_defaults_to_true() -> None:
    cfg = {"sample_generator": samples_tuple, "batch_size": 3}
    ids, _ = collect(round_factory(["x", "f"], SCHEMA, double, cfg)(0))
    assert len(ids) == 9


@pytest.mark.parametrize("as_dict", [False, True])
def test_sample_list_generator(as_dict: bool) -> None:
    def lists() -> Iterator[list[Any]]:
        src = list(samples_dict() if as_dict else samples_tuple())
        yield src[:3]
        yield src[3:4]
        yield []
        yield src[4:]

    make_round = round_factory(["x", "f"], SCHEMA, double, {"sample_list_generator": lists})
    chunks = list(make_round(0))
    assert [len(c.ids) for c in chunks] == [3, 1, 6]
    ids, data = collect(iter(chunks))
    np.testing.assert_array_equal(ids, np.arange(N))
    np.testing.assert_array_equal(data["2x-1"].ravel(), 2 * np.arange(N) - 1)


@pytest.mark.parametrize("as_dict", [False, True])
def test_batch_generator(as_dict: bool) -> None:
    def batches() -> Iterator[Any]:
        for start in range(0, N, 4):
            x = np.arange(start, min(start + 4, N), dtype=np.int64).reshape(-1, 1)
            f = np.repeat(x.astype(np.float32), 3, axis=1)
            yield {"x": x, "f": f} if as_dict else [x, f]

    make_round = round_factory(["x", "f"], SCHEMA, double, {"batch_generator": batches})
    ids, data = collect(make_round(0))
    np.testing.assert_array_equal(ids, np.arange(N))
    np.testing.assert_array_equal(data["x"].ravel(), np.arange(N))
    np.testing.assert_allclose(data["g"][:, 0], np.arange(N) + 0.5)


def test_rounds_rerun_the_reader() -> None:
    cfg = {"sample_generator": samples_tuple, "batch_size": 5}
    make_round = round_factory(["x", "f"], SCHEMA, double, cfg)
    first = collect(make_round(0))
    second = collect(make_round(0))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1]["2x-1"], second[1]["2x-1"])


def test_pass_through_only_without_program() -> None:
    cfg = {"sample_generator": samples_tuple, "batch_size": 4, "drop_last": False}
    _, data = collect(round_factory(["x", "f"], {"inp": "x"}, None, cfg)(0))
    assert list(data) == ["inp"]
    np.testing.assert_array_equal(data["inp"].ravel(), np.arange(N))


def test_outputs_take_priority_over_feeds_and_naming() -> None:
    def prog(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x * 10, x * 100

    cfg = {"sample_generator": lambda: iter(range(6)), "batch_size": 3}
    schema = {"a": "output0", "b": "output1", "x": "x"}
    _, data = collect(round_factory(["x"], schema, prog, cfg)(0))
    np.testing.assert_array_equal(data["a"], np.arange(6) * 10)
    np.testing.assert_array_equal(data["b"], np.arange(6) * 100)
    np.testing.assert_array_equal(data["x"], np.arange(6))  # scalars stack to [B]

    single = round_factory(["x"], {"out": "output"}, lambda x: x + 1, cfg)(0)
    np.testing.assert_array_equal(collect(single)[1]["out"], np.arange(6) + 1)
    shadow = round_factory(["x"], {"x": "x"}, lambda x: {"x": -x}, cfg)(0)
    np.testing.assert_array_equal(collect(shadow)[1]["x"], -np.arange(6))


def test_variable_length_samples_become_ragged() -> None:
    seqs = [np.arange(n, dtype=np.int64) for n in (3, 1, 4, 2, 5)]
    cfg = {"sample_generator": lambda: ((s,) for s in seqs), "batch_size": 2, "drop_last": False}

    def prog(ids: Ragged) -> dict[str, Any]:
        assert isinstance(ids, Ragged)
        return {"len": ids.lengths.copy()}

    chunks = list(round_factory(["ids"], {"ids": "ids", "len": "len"}, prog, cfg)(0))
    got = [s for c in chunks for s in c.data["ids"].to_list()]  # type: ignore[union-attr]
    for a, b in zip(got, seqs, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate([c.data["len"] for c in chunks]), [3, 1, 4, 2, 5])


# ---- bad configurations ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({}, "exactly one of the keys"),
        ({"sample_generator": samples_tuple, "batch_generator": samples_tuple}, "exactly one"),
        ({"batch_generator": samples_tuple, "batch_size": 3}, "unknown"),
        ({"sample_generator": samples_tuple}, "batch_size"),
        ({"sample_generator": samples_tuple, "batch_size": 0}, "batch_size"),
        ({"sample_generator": samples_tuple, "batch_size": True}, "batch_size"),
        ({"sample_generator": samples_tuple(), "batch_size": 2}, "callable"),
        ({"sample_generator": samples_tuple, "batch_size": 2, "drop_last": "no"}, "drop_last"),
        ([("batch_generator", samples_tuple)], "must be a dict"),
    ],
)
def test_bad_reader_config(cfg: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        round_factory(["x", "f"], SCHEMA, double, cfg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feed_list": "x"}, "feed_list"),
        ({"feed_list": ["x", "x"]}, "duplicate"),
        ({"schema": {}}, "schema"),
        ({"schema": {"a": 3}}, "schema"),
        ({"program": 42}, "program must be"),
        ({"program": None}, "program is None"),
        ({"program": "model.bin"}, "onnx"),
        ({"program": "missing.onnx"}, "does not exist"),
        ({"exe": "gpu7"}, "unknown device"),
        ({"exe": 0}, "must be a positive integer"),
        ({"exe": []}, "empty"),
        ({"buf_size": 0}, "buf_size"),
    ],
)
def test_bad_service_args(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "feed_list": ["x", "f"],
        "schema": SCHEMA,
        "program": double,
        "reader_config": {"sample_generator": samples_tuple, "batch_size": 2},
        "exe": None,
        "buf_size": 10,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        ServiceSpec(**args)


def test_wrong_number_of_fields_in_a_sample() -> None:
    cfg = {"sample_generator": lambda: iter([(1, 2, 3)]), "batch_size": 1}
    it = round_factory(["x", "f"], SCHEMA, double, cfg)(0)
    with pytest.raises(ConfigError, match=r"expected 2 field\(s\).*got a tuple of 3"):
        next(it)
    assert it.join(10)


def test_missing_dict_key_and_generator_returning_no_iterator() -> None:
    cfg = {"sample_generator": lambda: iter([{"x": 1}]), "batch_size": 1}
    with pytest.raises(ConfigError, match=r"missing \['f'\]"):
        list(round_factory(["x", "f"], SCHEMA, double, cfg)(0))
    with pytest.raises(ConfigError, match="expected an iterator"):
        list(round_factory(["x"], {"x": "x"}, None, {"batch_generator": lambda: 5})(0))


def test_unknown_schema_source_lists_available_names() -> None:
    cfg = {"sample_generator": samples_tuple, "batch_size": 4}
    it = round_factory(["x", "f"], {"z": "nope"}, double, cfg)(0)
    with pytest.raises(ConfigError, match=r"'nope'.*outputs: \['g', 'y'\], feeds: \['x', 'f'\]"):
        next(it)
    assert it.join(10)


def test_program_output_with_wrong_batch_size() -> None:
    cfg = {"sample_generator": samples_tuple, "batch_size": 4}
    it = round_factory(["x", "f"], {"y": "output"}, lambda x, f: x[:1], cfg)(0)
    with pytest.raises(WorkerError) as info:
        next(it)
    assert isinstance(info.value.__cause__, KnowledgeError)


# ---- workers, order, failures ----------------------------------------------------------------
class UnevenProgram:
    """Batch 0 is held back until a later batch has finished, so workers finish out of order;
    the other batches take uneven times."""

    def __init__(self, hold_first: bool) -> None:
        self.hold_first = hold_first
        self.later_done = threading.Event()
        self.finished: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray, f: np.ndarray) -> dict[str, np.ndarray]:
        first = int(x[0, 0])
        if first == 0 and self.hold_first:
            assert self.later_done.wait(30), "no later batch finished"
        else:
            time.sleep((first * 7 % 5) / 1000)  # uneven work, not synchronisation
        with self.lock:
            self.finished.append(first)
        if first != 0:
            self.later_done.set()
        return {"y": 2 * x - 1, "g": f * first}


def big_samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(60):
        yield (np.array([i], dtype=np.int64), np.full(3, i, dtype=np.float32))


def test_three_workers_give_the_same_chunks_in_order_as_one() -> None:
    cfg = {"sample_generator": big_samples, "batch_size": 4}
    one = list(round_factory(["x", "f"], SCHEMA, UnevenProgram(False), cfg, exe=None)(0))
    prog = UnevenProgram(True)
    three = list(round_factory(["x", "f"], SCHEMA, prog, cfg, exe=3, buf_size=6)(0))
    assert prog.finished != sorted(prog.finished)  # they did finish out of order
    assert len(one) == len(three) == 15
    for a, b in zip(one, three, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        assert list(a.data) == list(b.data)
        for k in a.data:
            np.testing.assert_array_equal(a.data[k], b.data[k])


def test_buf_size_bounds_batches_in_flight() -> None:
    read = [0]

    def batches() -> Iterator[tuple[np.ndarray]]:
        for i in range(30):
            read[0] += 1
            yield (np.array([[i]]),)

    def double(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": 2 * x}

    for exe in (1, 2):
        read[0] = 0
        make_round = round_factory(["x"], {"y": "y"}, double, {"batch_generator": batches}, exe, 3)
        consumed = 0
        for _ in make_round(0):
            consumed += 1
            assert read[0] - consumed <= 3
        assert consumed == 30


def test_pass_through_reads_on_demand_and_merges_small_batches() -> None:
    """Without a program there is no read-ahead: the reader runs as chunks are taken, and
    consecutive small batches come out merged, ids and values in order."""
    read = [0]

    def batches() -> Iterator[tuple[np.ndarray]]:
        for i in range(30):
            read[0] += 1
            yield (np.full((4, 2), i, dtype=np.int64),)

    make_round = round_factory(["x"], {"x": "x"}, None, {"batch_generator": batches}, 1, 3)
    chunks, samples = [], 0
    for chunk in make_round(0, 6):
        samples += len(chunk.ids)
        assert read[0] * 4 - 6 - samples in (0, 4)  # at most one batch held (not mergeable)
        chunks.append(chunk)
    assert len(chunks) < 30  # merged
    ids = np.concatenate([c.ids for c in chunks])
    np.testing.assert_array_equal(ids, np.arange(6, 120))
    x = np.concatenate([c.data["x"] for c in chunks])
    np.testing.assert_array_equal(x[:, 0], np.arange(6, 120) // 4)


def test_pass_through_never_merges_batches_that_differ() -> None:
    """A batch of another dtype is not merged into its neighbours (which would upcast it):
    the fields stay as the reader gave them."""

    def batches() -> Iterator[tuple[np.ndarray]]:
        for _ in range(12):  # enough fast reads for merging to start
            yield (np.zeros((2, 3), np.float32),)
        yield (np.zeros((2, 3), np.float64),)
        yield (np.zeros((2, 4), np.float64),)

    chunks = list(round_factory(["x"], {"x": "x"}, None, {"batch_generator": batches})(0))
    groups: list[list[Any]] = []  # runs of chunks of one dtype and width: [dtype, width, n]
    for c in chunks:
        kind = [c.data["x"].dtype.name, c.data["x"].shape[1]]
        if groups and groups[-1][:2] == kind:
            groups[-1][2] += len(c.ids)
        else:
            groups.append([*kind, len(c.ids)])
    assert groups == [["float32", 3, 24], ["float64", 3, 2], ["float64", 4, 2]]


def test_pass_through_hands_out_a_first_batch_without_reading_the_next() -> None:
    """Merging waits for nothing that is not ready: a reader's first batches are handed on
    alone, so a fast batch 0 is not held back by a slow (here: never asked) batch 1."""
    asked: list[int] = []

    def batches() -> Iterator[tuple[np.ndarray]]:
        for i in range(3):
            asked.append(i)
            yield (np.full((2, 1), i, np.int64),)

    it = round_factory(["x"], {"x": "x"}, None, {"batch_generator": batches})(0)
    first = next(it)
    assert first.ids.tolist() == [0, 1] and asked == [0]
    assert [c.ids.tolist() for c in it] == [[2, 3], [4, 5]]


@pytest.mark.parametrize("shape", [(2, 3), (64, 1024)], ids=["small: merged", "large: ahead"])
def test_pass_through_hands_out_samples_before_a_reader_error(shape: tuple[int, int]) -> None:
    def batches() -> Iterator[tuple[np.ndarray]]:
        for _ in range(12):  # enough fast reads for merging (or reading ahead) to start
            yield (np.zeros(shape, np.float32),)
        raise OSError("disk gone")

    it = round_factory(["x"], {"x": "x"}, None, {"batch_generator": batches})(0)
    handed = 0
    with pytest.raises(OSError, match="disk gone"):
        for chunk in it:
            handed += len(chunk.ids)
    assert handed == 12 * shape[0]  # every sample read before the error, merged or held


def test_pass_through_reads_large_batches_ahead_without_copying_them() -> None:
    """Large batches (64 KiB and more) are not concatenated: while the reader keeps up they are
    read ahead up to 4 MiB, handed on as they were (views of the reader's arrays), and the
    round says how many it holds (``ready``) for the teacher to send them as one message."""
    blocks = [np.full((64, 1024), i, np.float32) for i in range(40)]  # 256 KiB each

    def batches() -> Iterator[tuple[np.ndarray]]:
        yield from ((b,) for b in blocks)

    it = round_factory(["x"], {"x": "x"}, None, {"batch_generator": batches})(0)
    held, out = [], []
    for chunk in it:
        held.append(it.ready())
        out.append(chunk)
    assert len(out) == 40  # one chunk per batch
    assert all(np.shares_memory(c.data["x"], b) for c, b in zip(out, blocks, strict=True))
    np.testing.assert_array_equal(np.concatenate([c.ids for c in out]), np.arange(40 * 64))
    assert held[:7] == [0] * 7  # the first batches are handed on alone (8 fast reads first)
    assert max(held) == 15  # then up to 4 MiB read ahead: 16 batches, 15 held behind the first
    assert held[-1] == 0


def test_worker_error_names_device_and_batch_and_stops_everything() -> None:
    calls = []

    def prog(x: np.ndarray, f: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(int(x[0, 0]))
        if int(x[0, 0]) == 8:
            raise ValueError("boom")
        return {"y": x, "g": f}

    cfg = {"sample_generator": big_samples, "batch_size": 4}
    it = round_factory(["x", "f"], SCHEMA, prog, cfg, exe=["cpu", "cpu"], buf_size=4)(0)
    got = [int(next(it).ids[0]), int(next(it).ids[0])]
    with pytest.raises(WorkerError) as info:
        next(it)
    err = info.value
    assert isinstance(err.__cause__, ValueError)
    assert "'cpu'" in str(err)
    assert "batch 2 (sample ids 8..11)" in str(err)
    assert "boom" in str(err)
    assert got == [0, 4]  # the chunks before the failed batch were delivered
    assert it.join(10)  # every thread ended
    assert max(calls) < 60  # the round was not run to its end
    with pytest.raises(WorkerError):
        next(it)


def test_reader_error_is_raised_after_earlier_chunks() -> None:
    def batches() -> Iterator[tuple[np.ndarray]]:
        yield (np.array([[1], [2]]),)
        raise RuntimeError("disk gone")

    it = round_factory(["x"], {"x": "x"}, None, {"batch_generator": batches})(0)
    assert len(next(it).ids) == 2
    with pytest.raises(RuntimeError, match="disk gone"):
        next(it)
    assert it.join(10)


def test_start_sample_skips_batches_without_predicting_them() -> None:
    calls: list[int] = []

    def prog(x: np.ndarray, f: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(int(x[0, 0]))
        return double(x, f)

    cfg = {"sample_generator": samples_tuple, "batch_size": 4, "drop_last": False}
    make_round = round_factory(["x", "f"], SCHEMA, prog, cfg)
    chunks = list(make_round(0, 5))  # batches [0..3] skipped, [4..7] straddles, [8, 9]
    assert calls == [4, 8]
    assert [c.ids.tolist() for c in chunks] == [[5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(chunks[0].data["x"].ravel(), [5, 6, 7])
    np.testing.assert_array_equal(chunks[0].data["2x-1"].ravel(), [9, 11, 13])
    calls.clear()
    assert [c.ids.tolist() for c in make_round(0, 8)] == [[8, 9]]
    assert calls == [8]
    calls.clear()
    assert list(make_round(0, 10)) == []
    assert list(make_round(0, 99)) == []
    assert calls == []
    with pytest.raises(ConfigError, match="start_sample"):
        make_round(0, -1)


def test_start_sample_with_ragged_pass_through() -> None:
    seqs = [np.arange(n) for n in (2, 3, 1, 4)]
    cfg = {"sample_generator": lambda: ((s,) for s in seqs), "batch_size": 3, "drop_last": False}
    chunks = list(round_factory(["t"], {"t": "t"}, None, cfg)(0, 1))
    assert [i for c in chunks for i in c.ids.tolist()] == [1, 2, 3]  # sample 0 skipped
    assert all(isinstance(c.data["t"], Ragged) for c in chunks)
    assert [n for c in chunks for n in c.data["t"].lengths.tolist()] == [3, 1, 4]
    values = np.concatenate([c.data["t"].values for c in chunks])
    np.testing.assert_array_equal(values, np.concatenate(seqs[1:]))


def test_close_mid_round_and_garbage_collection_stop_the_threads() -> None:
    cfg = {"sample_generator": big_samples, "batch_size": 2}
    make_round = round_factory(["x", "f"], SCHEMA, double, cfg, exe=2, buf_size=3)
    it = make_round(0)
    next(it)
    it.close()
    assert it.join(10)
    with pytest.raises(StopIteration):
        next(it)

    it2 = make_round(0)
    next(it2)
    threads = list(it2._state.threads)
    del it2
    gc.collect()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)

    with make_round(0) as it3:
        next(it3)
    assert it3.join(10)


def test_round_factory_needs_a_reader() -> None:
    with pytest.raises(ConfigError, match="make_query_handler"):
        round_factory(["x"], {"x": "x"}, None, None)  # type: ignore[arg-type]


# ---- query mode ------------------------------------------------------------------------------
def test_query_handler() -> None:
    handle = query_handler(["x", "f"], SCHEMA, double, exe=2)
    x = np.arange(5, dtype=np.int64).reshape(-1, 1)
    out = handle({"x": x, "f": np.ones((5, 3), np.float32), "extra": 1})
    assert list(out) == ["x", "2x-1", "g"]
    np.testing.assert_array_equal(out["2x-1"], 2 * x - 1)
    np.testing.assert_array_equal(handle({"x": x, "f": np.zeros((5, 3))})["x"], x)
    with pytest.raises(ConfigError, match=r"missing feeds \['f'\]"):
        handle({"x": x})
    with pytest.raises(ConfigError, match="share the first"):
        handle({"x": x, "f": np.zeros((4, 3))})
    with pytest.raises(ConfigError, match="dict of feed name"):
        handle([x])  # type: ignore[arg-type]


def test_query_handler_ragged_feed() -> None:
    handle = query_handler(["t"], {"t": "t"}, None)
    out = handle({"t": [np.arange(2), np.arange(5)]})
    assert isinstance(out["t"], Ragged)
    assert out["t"].lengths.tolist() == [2, 5]


def test_core_modules_do_not_import_frameworks() -> None:
    code = (
        "import sys, pantheon, pantheon._service, pantheon._codecs, pantheon.onnx, pantheon.hf\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_declared_ragged_feeds_are_ragged_from_the_first_batch() -> None:
    seqs = [np.arange(2), np.arange(2), np.arange(3)]
    cfg = {
        "sample_generator": lambda: ((s,) for s in seqs),
        "batch_size": 2,
        "drop_last": False,
        "ragged_feeds": ["t"],
    }
    chunks = list(round_factory(["t"], {"t": "t"}, None, cfg)(0))
    assert all(isinstance(c.data["t"], Ragged) for c in chunks)

    def batches() -> Iterator[dict[str, Any]]:
        yield {"t": np.zeros((2, 4), np.int64)}  # dense: every row of length 4
        yield {"t": [np.arange(1), np.arange(3)]}

    cfg2 = {"batch_generator": batches, "ragged_feeds": ["t"]}
    both = list(round_factory(["t"], {"t": "t"}, None, cfg2)(0))  # both ragged
    assert all(isinstance(c.data["t"], Ragged) for c in both)
    assert [n for c in both for n in c.data["t"].lengths.tolist()] == [4, 4, 1, 3]
    with pytest.raises(ConfigError, match="ragged_feeds"):
        round_factory(["t"], {"t": "t"}, None, {"batch_generator": batches, "ragged_feeds": 1})
    with pytest.raises(ConfigError, match="ragged_feeds"):
        round_factory(["t"], {"t": "t"}, None, {"batch_generator": batches, "ragged_feeds": ["u"]})


@pytest.mark.parametrize("kind", ["sample_generator", "sample_list_generator"])
def test_torch_bfloat16_samples_are_converted_like_batches(kind: str) -> None:
    """Per-sample readers convert each sample as batch readers do: a torch bfloat16 tensor
    (which numpy cannot read directly) becomes a numpy bfloat16 feed."""
    torch = pytest.importorskip("torch")

    def samples() -> Iterator[tuple[Any]]:
        for i in range(6):
            yield (torch.full((2,), float(i), dtype=torch.bfloat16),)

    def lists() -> Iterator[list[tuple[Any]]]:
        yield list(samples())

    cfg: dict[str, Any] = (
        {"sample_generator": samples, "batch_size": 3}
        if kind == "sample_generator"
        else {"sample_list_generator": lists}
    )
    make_round = round_factory(["x"], {"x": "x"}, None, cfg)
    ids, data = collect(make_round(0))
    np.testing.assert_array_equal(ids, np.arange(6))
    assert str(data["x"].dtype) == "bfloat16"
    np.testing.assert_array_equal(
        data["x"].astype(np.float32), np.repeat(np.arange(6.0), 2).reshape(6, 2)
    )
