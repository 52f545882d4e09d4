"""The top-k codec: sparse values + indices of large-vocabulary logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantheon import ConfigError, KnowledgeError, Ragged
from pantheon._codecs import (
    SparseTopK,
    TopK,
    bits_for,
    codec_from_spec,
    pack_bits,
    packed_size,
    registered_codecs,
    resolve_codecs,
    unpack_bits,
)
from pantheon._knowledge import BFLOAT16, describe


def logits(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def reference_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, order, axis=-1), order


@pytest.mark.parametrize("shape", [(5, 50), (3, 4, 50)])
def test_dense_round_trip(shape: tuple[int, ...]) -> None:
    x = logits(*shape)
    codec = TopK(7)
    parts = codec.encode(x)
    assert set(parts) == {"values", "indices"}
    vals, idx = parts["values"], parts["indices"]
    assert isinstance(vals, np.ndarray)
    assert isinstance(idx, np.ndarray)
    assert vals.shape == (*shape[:-1], 7)
    assert idx.shape == (*shape[:-1], packed_size(7, 6))  # 50 entries: 6-bit indices
    assert vals.dtype == np.float16
    assert idx.dtype == np.uint8
    ref_vals, ref_idx = reference_topk(x, 7)
    np.testing.assert_array_equal(unpack_bits(idx, 6, 7), ref_idx)
    np.testing.assert_array_equal(vals, ref_vals.astype(np.float16))
    field = describe({"x": x})["x"]
    dense = codec.decode(parts, field)
    assert isinstance(dense, np.ndarray)
    assert dense.shape == x.shape
    assert dense.dtype == np.float32
    kept = np.isfinite(dense)
    assert (kept.sum(axis=-1) == 7).all()
    np.testing.assert_allclose(dense[kept], x[kept], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(np.take_along_axis(kept, ref_idx, axis=-1), True)


def test_ragged_round_trip_per_token() -> None:
    field_value = Ragged.from_list([logits(3, 40, seed=1), logits(0, 40), logits(2, 40, seed=2)])
    codec = TopK(5, values_dtype="float32")
    parts = codec.encode(field_value)
    vals, idx = parts["values"], parts["indices"]
    assert isinstance(vals, Ragged)
    assert isinstance(idx, Ragged)
    assert vals.lengths.tolist() == idx.lengths.tolist() == [3, 0, 2]
    assert vals.inner_shape == (5,)
    assert idx.inner_shape == (packed_size(5, 6),)
    ref_vals, ref_idx = reference_topk(field_value.values, 5)
    np.testing.assert_array_equal(vals.values, ref_vals)
    np.testing.assert_array_equal(unpack_bits(idx.values, 6, 5), ref_idx)
    field = describe({"l": field_value})["l"]
    assert field == {"shape": [-1, -1, 40], "dtype": "float32", "lod_level": 1}
    dense = codec.decode(parts, field)
    assert isinstance(dense, Ragged)
    assert dense.lengths.tolist() == [3, 0, 2]
    expected = np.full_like(field_value.values, -np.inf)
    np.put_along_axis(expected, ref_idx, ref_vals, axis=-1)
    np.testing.assert_array_equal(dense.values, expected)


def test_large_vocabulary_packs_indices_at_17_bits() -> None:
    x = logits(2, 70_000)
    parts = TopK(3).encode(x)
    idx = parts["indices"]
    assert isinstance(idx, np.ndarray)
    assert idx.dtype == np.uint8
    assert idx.shape == (2, 7)  # 3 * 17 = 51 bits
    np.testing.assert_array_equal(unpack_bits(idx, 17, 3), reference_topk(x, 3)[1])
    sparse = TopK(3).sparse(parts, describe({"x": x})["x"])
    assert sparse.vocab_size == 70_000
    assert sparse.indices.dtype == np.int32
    np.testing.assert_array_equal(sparse.indices, reference_topk(x, 3)[1])


def test_layout_1_large_vocabulary_uses_int32_indices() -> None:
    x = logits(2, 70_000)
    codec = codec_from_spec(
        {"name": "topk", "k": 3, "values_dtype": "float16", "log_softmax": False, "fill": None}
    )
    assert isinstance(codec, TopK)
    assert codec.layout == 1
    parts = codec.encode(x)
    idx = parts["indices"]
    assert isinstance(idx, np.ndarray)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(idx, reference_topk(x, 3)[1])
    sparse = codec.sparse(parts, describe({"x": x})["x"])
    assert sparse.indices.dtype == np.int32
    assert sparse.holds is None  # raw values of an earlier file: unknown


def test_log_softmax_values_and_custom_fill() -> None:
    x = logits(4, 30)
    codec = TopK(4, log_softmax=True, values_dtype="float32", fill=-1e4)
    parts = codec.encode(x)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(parts["values"], reference_topk(logp, 4)[0], rtol=1e-5, atol=1e-6)
    dense = codec.decode(parts, describe({"x": x})["x"])
    assert isinstance(dense, np.ndarray)
    assert (dense == -1e4).sum() == 4 * 26


def test_bfloat16_input_and_values() -> None:
    x = logits(3, 20).astype(BFLOAT16)
    codec = TopK(2, values_dtype="bfloat16")
    parts = codec.encode(x)
    assert parts["values"].dtype == BFLOAT16
    dense = codec.decode(parts, describe({"x": x})["x"])
    assert isinstance(dense, np.ndarray)
    assert dense.dtype == BFLOAT16


def test_sparse_topk_dense_and_codec_sparse() -> None:
    x = logits(2, 3, 10)
    codec = TopK(3)
    sparse = codec.sparse(codec.encode(x), describe({"x": x})["x"])
    assert isinstance(sparse, SparseTopK)
    assert sparse.k == 3
    assert sparse.indices.dtype == np.int32
    probs = sparse.dense(fill=0.0, dtype=np.float32)
    assert isinstance(probs, np.ndarray)
    assert probs.shape == (2, 3, 10)
    assert ((probs != 0).sum(axis=-1) == 3).all()
    manual = SparseTopK(np.array([[1.0, 0.5]]), np.array([[4, 1]]), 6)
    np.testing.assert_array_equal(manual.dense(fill=0.0), [[0, 0.5, 0, 0, 1.0, 0]])
    with pytest.raises(KnowledgeError, match="same shape"):
        SparseTopK(np.zeros((1, 2)), np.zeros((1, 3), np.int32), 5)
    with pytest.raises(KnowledgeError, match="both"):
        SparseTopK(Ragged.from_list([np.zeros((1, 2))]), np.zeros((1, 2), np.int32), 5)


def test_spec_registry_and_resolve() -> None:
    assert "topk" in registered_codecs()
    codec = TopK(20, log_softmax=True)
    spec = codec.spec()
    assert spec == {
        "name": "topk",
        "version": 2,
        "k": 20,
        "values_dtype": "float16",
        "log_softmax": True,
        "holds": "logprobs",
        "temperature": 1.0,
        "tail": False,
        "fill": None,
    }
    rebuilt = codec_from_spec(spec)
    assert isinstance(rebuilt, TopK)
    assert rebuilt.spec() == spec
    default = codec_from_spec({"name": "topk"})
    assert isinstance(default, TopK)
    assert default.k == 20
    assert default.layout == 2
    partial = codec_from_spec({"name": "topk", "k": 8})
    assert isinstance(partial, TopK) and (partial.k, partial.layout) == (8, 2)
    with pytest.raises(ConfigError, match="contradicts"):
        codec_from_spec({**spec, "holds": "logits"})
    with pytest.raises(ConfigError, match="layout"):
        codec_from_spec({**spec, "version": 3})
    with pytest.raises(ConfigError, match="also"):
        codec_from_spec({"name": "topk", "k": 3, "code": "evil"})
    desc = {"logits": {"shape": [-1, 100], "dtype": "float32", "lod_level": 0}}
    assert isinstance(resolve_codecs(desc, {"logits": TopK(5)}, False)["logits"], TopK)
    assert isinstance(resolve_codecs(desc, {"logits": "topk"}, False)["logits"], TopK)


@pytest.mark.parametrize(
    ("field", "match"),
    [
        ({"shape": [-1, 100], "dtype": "int64", "lod_level": 0}, "float"),
        ({"shape": [-1], "dtype": "float32", "lod_level": 0}, "vocabulary"),
        ({"shape": [-1, 3], "dtype": "float32", "lod_level": 0}, "at least 5"),
        ({"shape": [-1, -1], "dtype": "float32", "lod_level": 1}, "vocabulary"),
    ],
)
def test_check_rejects_fields_it_cannot_store(field: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TopK(5).check("logits", field)


def test_encode_errors() -> None:
    with pytest.raises(KnowledgeError, match="larger than"):
        TopK(11).encode(logits(2, 10))
    with pytest.raises(KnowledgeError, match="floats"):
        TopK(1).encode(np.zeros((2, 3), np.int64))
    with pytest.raises(KnowledgeError, match="vocabulary"):
        TopK(1).encode(np.zeros(3, np.float32))
    with pytest.raises(KnowledgeError, match="vocabulary"):
        TopK(1).encode(Ragged.from_list([np.zeros(3, np.float32)]))
    with pytest.raises(ConfigError, match="k must"):
        TopK(0)
    with pytest.raises(ConfigError, match="values_dtype"):
        TopK(3, values_dtype="int8")


def test_bytes_per_token_of_top20_of_32k_vocabulary() -> None:
    tokens, vocab = 64, 32_000
    x = logits(tokens, vocab)
    parts = TopK(20).encode(x)
    per_token = sum(np.asarray(p).nbytes for p in parts.values()) / tokens
    assert per_token == 40 + 38  # float16 values + 20 indices at 15 bits
    dense_fp16 = vocab * 2
    assert per_token / dense_fp16 < 0.00126


@pytest.mark.parametrize(
    ("rows", "vocab", "k"), [(1, 1001, 20), (7, 333, 5), (40, 32_000, 20), (3, 64, 8)]
)
def test_candidate_filter_agrees_with_a_full_sort(rows: int, vocab: int, k: int) -> None:
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, vocab)).astype(np.float32)
    x[0, : vocab // 2] = -np.inf  # a row half -inf
    vals = TopK(k, values_dtype="float32").encode(x)["values"]
    np.testing.assert_array_equal(vals, -np.sort(-x, axis=-1)[:, :k])
    ties = rng.integers(0, 3, size=(rows, vocab)).astype(np.float32)  # heavy ties: fallback
    tied = TopK(k, values_dtype="float32").encode(ties)
    np.testing.assert_array_equal(tied["values"], -np.sort(-ties, axis=-1)[:, :k])
    tied_idx = unpack_bits(tied["indices"], bits_for(vocab), k).astype(np.intp)
    got = np.take_along_axis(ties, tied_idx, axis=-1)
    np.testing.assert_array_equal(got, tied["values"])


def test_indices_outside_the_vocabulary_are_refused_not_wrapped() -> None:
    codec = TopK(2, layout=1)
    field = {"shape": [-1, 6], "dtype": "float32", "lod_level": 0}
    values = np.ones((1, 2), np.float16)
    packed = TopK(2)
    for high in (6, 7):  # 3 bits hold up to 7
        stored = {"values": values, "indices": pack_bits(np.array([[0, high]]), 3)}
        with pytest.raises(KnowledgeError, match=rf"{high}, outside the vocabulary \[0, 6\)"):
            packed.sparse(stored, field)
    with pytest.raises(KnowledgeError, match="packed at 3 bits"):
        packed.sparse({"values": values, "indices": np.zeros((1, 2), np.int16)}, field)
    for bad in (np.array([[-1, 0]], np.int32), np.array([[6, 0]], np.int32)):
        with pytest.raises(KnowledgeError, match=r"outside the vocabulary \[0, 6\)"):
            codec.decode({"values": values, "indices": bad}, field)
        with pytest.raises(KnowledgeError, match="outside the vocabulary"):
            codec.sparse({"values": values, "indices": bad}, field)


def test_densifying_past_what_numpy_can_address_is_a_knowledge_error() -> None:
    sparse = SparseTopK(np.ones((4, 2), np.float32), np.zeros((4, 2), np.int32), 2**62)
    with pytest.raises(KnowledgeError, match="sparse_topk=True"):
        sparse.dense()


@settings(max_examples=60, deadline=None)
@given(
    vocab=st.integers(2, 5000),
    k=st.integers(1, 24),
    rows=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
    values_dtype=st.sampled_from(["float16", "float32", "uint8"]),
)
def test_packed_indices_round_trip_at_any_vocabulary_width(
    vocab: int, k: int, rows: int, seed: int, values_dtype: str
) -> None:
    k = min(k, vocab)
    x = np.random.default_rng(seed).permutation(rows * vocab).reshape(rows, vocab)
    x = x.astype(np.float32) / (rows * vocab)  # distinct values: one right answer
    codec = TopK(k, values_dtype=values_dtype)
    parts = codec.encode(x)
    assert parts["indices"].shape == (rows, packed_size(k, bits_for(vocab)))
    sparse = codec.sparse(parts, describe({"x": x})["x"])
    np.testing.assert_array_equal(sparse.indices, np.argsort(-x, axis=-1)[:, :k])
    rebuilt = codec_from_spec(codec.spec())
    assert isinstance(rebuilt, TopK)
    again = rebuilt.sparse(parts, describe({"x": x})["x"])
    np.testing.assert_array_equal(again.indices, sparse.indices)
