"""Every codec tier on both paths: dumped to a file and read back, and streamed from a teacher
to a student over 127.0.0.1; both give the same knowledge (samples drawn by sample id)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from pantheon import (
    KnowledgeFile,
    Ragged,
    Sampled,
    SparseSamples,
    SparseTopK,
    Student,
    Teacher,
    TopK,
)

VOCAB = 70_000  # 17-bit indices
N = 12
T = 3  # positions per sample


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = np.arange(N, dtype=np.int64).reshape(N, 1)
    logits = (rng.standard_normal((N, T, VOCAB)) * 2).astype(np.float32)
    return x, logits


def _codecs() -> dict[str, Any]:
    return {
        "x": "int16",
        "fp16": TopK(8, log_softmax=True),
        "q8": TopK(8, values_dtype="uint8", log_softmax=True, tail=True),
        "sampled": Sampled(12, seed=3),
    }


def _program(x: np.ndarray) -> dict[str, np.ndarray]:
    _, logits = _data()
    rows = logits[x[:, 0]]
    return {"fp16": rows, "q8": rows, "sampled": rows}


def _service(teacher: Teacher) -> None:
    x, _ = _data()

    def batches():
        for s in range(0, N, 5):
            yield (x[s : s + 5],)

    teacher.start_knowledge_service(
        feed_list=["x"],
        schema={"x": "x", "fp16": "fp16", "q8": "q8", "sampled": "sampled"},
        program=_program,
        reader_config={"batch_generator": batches},
    )


def _read(student: Student) -> dict[str, Any]:
    batches = list(student.get_knowledge_generator(4)())
    out: dict[str, Any] = {"x": np.concatenate([b["x"] for b in batches])}
    for key in ("fp16", "q8"):
        parts = [b[key] for b in batches]
        assert all(isinstance(p, SparseTopK) for p in parts)
        out[key] = SparseTopK.concat(parts)
    samples = [b["sampled"] for b in batches]
    assert all(isinstance(p, SparseSamples) for p in samples)
    out["sampled"] = SparseSamples.concat(samples)
    return out


def _check(got: dict[str, Any]) -> None:
    x, logits = _data()
    np.testing.assert_array_equal(got["x"], x)
    y = logits.astype(np.float64)
    logp = y - y.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    top = np.argsort(-logp, axis=-1)[..., :8]
    for key in ("fp16", "q8"):
        sparse = got[key]
        assert sparse.vocab_size == VOCAB and sparse.holds == "logprobs"
        np.testing.assert_array_equal(sparse.indices, top)
        exact = np.take_along_axis(logp, top, axis=-1)
        np.testing.assert_allclose(sparse.values, exact, atol=0.05)
    assert got["q8"].tail is not None and got["fp16"].tail is None
    counts = np.asarray(got["sampled"].counts)
    assert counts.shape == (N, T, 12) and (counts.sum(-1) == 12).all()


def test_file_and_wire_carry_the_same_packed_knowledge(tmp_path: Path) -> None:
    path = tmp_path / "k.arrow"
    with Teacher(out_path=path, codecs=_codecs()) as offline:
        offline.start()
        _service(offline)
    with KnowledgeFile(path) as kf:
        columns = {c["name"]: c for k in kf.storage for c in kf.storage[k]["columns"]}
    assert columns["fp16@indices"]["dtype"] == "uint8"
    assert columns["fp16@indices"]["shape"] == [-1, T, 17]  # 8 indices x 17 bits
    assert columns["sampled@ids"]["shape"] == [-1, T, 26]  # 12 ids x 17 bits
    assert columns["x"]["dtype"] == "int16"
    with Student(sparse_topk=True) as student:
        student.register_teacher(in_path=path)
        student.start()
        from_file = _read(student)
    _check(from_file)

    teacher = Teacher(out_port=0, codecs=_codecs(), timeout=60)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            teacher.start(timeout=60)
            _service(teacher)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with Student(sparse_topk=True, timeout=60) as student:
            student.register_teacher(in_address=teacher.address)
            student.start()
            online = _read(student)
    finally:
        thread.join(60)
        teacher.close()
    assert not thread.is_alive() and errors == []
    _check(online)
    for key in ("fp16", "q8"):
        np.testing.assert_array_equal(online[key].indices, from_file[key].indices)
        np.testing.assert_array_equal(online[key].values, from_file[key].values)
    # the same draws: they depend on the sample ids and the seed only
    np.testing.assert_array_equal(online["sampled"].ids, from_file["sampled"].ids)
    np.testing.assert_array_equal(online["sampled"].counts, from_file["sampled"].counts)


def _ragged_logits(ids: np.ndarray) -> Ragged:
    """Sample i: (i % 3) + 1 tokens of logits, computed from its id."""
    rows = [
        (np.random.default_rng(int(i)).standard_normal(((i % 3) + 1, 5000)) * 2).astype(np.float32)
        for i in ids
    ]
    return Ragged.from_list(rows)


def test_ragged_token_knowledge_over_the_wire_matches_the_codecs_themselves() -> None:
    """Per-token (ragged) knowledge, as a causal LM teacher sends it: every tier streamed
    from a teacher equals what the codec makes of the same logits and sample ids."""
    codecs = {
        "q8": TopK(6, values_dtype="uint8", log_softmax=True, tail=True, temperature=2.0),
        "sampled": Sampled(12, temperature=2.0, seed=9),
    }

    def program(x: np.ndarray) -> dict[str, Ragged]:
        logits = _ragged_logits(x[:, 0])
        return {"q8": logits, "sampled": logits}

    def batches():
        for s in range(0, N, 5):
            yield (np.arange(s, min(N, s + 5), dtype=np.int64).reshape(-1, 1),)

    teacher = Teacher(out_port=0, codecs=codecs, timeout=60)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            teacher.start(timeout=60)
            teacher.start_knowledge_service(
                feed_list=["x"],
                schema={"x": "x", "q8": "q8", "sampled": "sampled"},
                program=program,
                reader_config={"batch_generator": batches},
            )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with Student(sparse_topk=True, timeout=60) as student:
            student.register_teacher(in_address=teacher.address)
            student.start()
            got = list(student.get_knowledge_generator(4)())
    finally:
        thread.join(60)
        teacher.close()
    assert not thread.is_alive() and errors == []
    ids = np.concatenate([b["x"][:, 0] for b in got])
    np.testing.assert_array_equal(ids, np.arange(N))
    logits = _ragged_logits(ids)
    field = {"shape": [-1, -1, 5000], "dtype": "float32", "lod_level": 1}
    top = SparseTopK.concat([b["q8"] for b in got])
    want = codecs["q8"].sparse(codecs["q8"].encode(logits), field)
    assert isinstance(top.values, Ragged) and top.values.lengths.tolist() == (ids % 3 + 1).tolist()
    assert top.temperature == 2.0 and top.holds == "logprobs"
    np.testing.assert_array_equal(top.indices.values, want.indices.values)  # type: ignore[union-attr]
    np.testing.assert_array_equal(top.values.values, want.values.values)  # type: ignore[union-attr]
    np.testing.assert_array_equal(top.tail.values, want.tail.values)  # type: ignore[union-attr]
    samples = SparseSamples.concat([b["sampled"] for b in got])
    expected = codecs["sampled"].sparse(codecs["sampled"].encode_ids(logits, ids), field)
    np.testing.assert_array_equal(samples.ids.values, expected.ids.values)  # type: ignore[union-attr]
    np.testing.assert_array_equal(samples.counts.values, expected.counts.values)  # type: ignore[union-attr]
