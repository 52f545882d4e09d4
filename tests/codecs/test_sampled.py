"""Sampled knowledge: counts summing to n, frequencies converging to the distribution,
draws fixed by the seed and the sample ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantheon import ConfigError, KnowledgeError, Ragged, Sampled, SparseSamples
from pantheon._codecs import codec_from_spec, encode_batch, unpack_bits
from pantheon._knowledge import describe


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 8),
    vocab=st.integers(1, 3000),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**63),
    temperature=st.floats(0.1, 10.0),
)
def test_counts_sum_to_n_and_ids_are_distinct_and_drawable(
    rows: int, vocab: int, n: int, seed: int, temperature: float
) -> None:
    rng = np.random.default_rng(seed % 2**32)
    x = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    x[:, : vocab // 2] = -np.inf if vocab > 1 else 0.0  # half the vocabulary impossible
    codec = Sampled(n, temperature=temperature, seed=seed)
    parts = codec.encode(x)
    sparse = codec.sparse(parts, describe({"x": x})["x"])
    ids, counts = np.asarray(sparse.ids), np.asarray(sparse.counts)
    assert ids.shape == counts.shape == (rows, n)
    assert ids.dtype == np.int32 and counts.dtype == np.uint8
    np.testing.assert_array_equal(counts.sum(axis=-1), n)
    used = counts > 0
    assert (used[:, :-1] >= used[:, 1:]).all()  # used slots first
    for r in range(rows):
        kept = ids[r, used[r]]
        assert (np.diff(kept) > 0).all()  # distinct, increasing
        assert np.isfinite(x[r, kept]).all()  # never a token of probability 0
        assert (ids[r, ~used[r]] == 0).all()


@pytest.mark.parametrize("vocab", [50, 700])  # one block of the search, and several
def test_empirical_frequencies_converge_to_the_distribution(vocab: int) -> None:
    """Many positions with the same logits: the pooled counts / draws estimate p (a fixed seed;
    a chi-square bound far beyond its 99.99th percentile)."""
    rng = np.random.default_rng(7)
    positions, n, temperature = 4000, 12, 2.0
    x = rng.standard_normal(vocab).astype(np.float32) * 3
    field = np.broadcast_to(x, (positions, vocab)).copy()
    codec = Sampled(n, temperature=temperature, seed=123)
    sparse = codec.sparse(codec.encode(field), describe({"x": field})["x"])
    freq = np.bincount(
        np.asarray(sparse.ids).ravel(), weights=np.asarray(sparse.counts).ravel(), minlength=vocab
    )
    p = softmax(x / temperature)
    draws = positions * n
    assert freq.sum() == draws
    expected = p * draws
    big = expected >= 5
    chi2 = (((freq - expected) ** 2)[big] / expected[big]).sum()
    df = big.sum() - 1
    assert chi2 < df + 6 * np.sqrt(2 * df) + 20  # far past the 99.99th percentile
    np.testing.assert_allclose(freq / draws, p, atol=0.01)
    # the unbiased estimate through the dense decoded form
    dense = codec.decode(codec.encode(field), describe({"x": field})["x"])
    mean_p = np.exp(np.asarray(dense, np.float64)).mean(axis=0)
    np.testing.assert_allclose(mean_p, p, atol=0.01)


def test_draws_depend_on_the_sample_ids_and_seed_not_on_the_batching() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10, 4, 500)).astype(np.float32)
    codec = Sampled(12, seed=5)
    ids = np.arange(100, 110, dtype=np.int64)
    whole = codec.encode_ids(x, ids)
    halves = [codec.encode_ids(x[:4], ids[:4]), codec.encode_ids(x[4:], ids[4:])]
    for part in ("ids", "counts"):
        np.testing.assert_array_equal(
            whole[part], np.concatenate([np.asarray(h[part]) for h in halves])
        )
    other_seed = Sampled(12, seed=6).encode_ids(x, ids)
    assert not np.array_equal(other_seed["ids"], whole["ids"])
    other_ids = codec.encode_ids(x, ids + 1)
    assert not np.array_equal(other_ids["ids"], whole["ids"])
    # encode_batch hands the batch's ids to the codec
    stored = encode_batch({"x": x}, {"x": codec}, ids=ids)
    np.testing.assert_array_equal(stored[("x", "ids")], whole["ids"])


def test_ragged_tokens_and_the_152k_budget() -> None:
    rng = np.random.default_rng(9)
    vocab = 151_936
    field = Ragged.from_list([rng.standard_normal((t, vocab)).astype(np.float32) for t in (2, 3)])
    codec = Sampled(12, seed=1)
    parts = codec.encode_ids(field, np.array([0, 1]))
    assert isinstance(parts["ids"], Ragged) and parts["ids"].inner_shape == (27,)  # 12 x 18 bits
    assert isinstance(parts["counts"], Ragged) and parts["counts"].inner_shape == (12,)
    per_token = sum(p.values.nbytes for p in parts.values() if isinstance(p, Ragged)) / 5
    assert per_token == 39
    sparse = codec.sparse(parts, describe({"l": field})["l"])
    assert isinstance(sparse.ids, Ragged) and sparse.ids.lengths.tolist() == [2, 3]
    again = SparseSamples.concat([sparse.slice(0, 1), sparse.slice(1, 2)])
    np.testing.assert_array_equal(again.ids.values, sparse.ids.values)  # type: ignore[union-attr]
    picked = sparse.take(np.array([1]))
    assert isinstance(picked.counts, Ragged) and picked.counts.lengths.tolist() == [3]
    raw = unpack_bits(parts["ids"].values, 18, 12)
    np.testing.assert_array_equal(raw, sparse.ids.values)  # type: ignore[union-attr]


def test_spec_and_refusals() -> None:
    codec = Sampled(8, temperature=1.5, seed=3)
    spec = codec.spec()
    assert spec == {
        "name": "sampled",
        "version": 1,
        "n": 8,
        "temperature": 1.5,
        "seed": 3,
        "holds": "samples",
    }
    rebuilt = codec_from_spec(spec)
    assert isinstance(rebuilt, Sampled) and rebuilt.spec() == spec
    with pytest.raises(ConfigError, match="sampled codec"):
        codec_from_spec({**spec, "version": 2})
    with pytest.raises(ConfigError, match="at most 255"):
        Sampled(256)
    with pytest.raises(KnowledgeError, match=r"one sample id per sample \(2\)"):
        Sampled(2).encode_ids(np.zeros((2, 5), np.float32), np.arange(3))
    with pytest.raises(KnowledgeError, match="all -inf"):
        Sampled(2).encode(np.full((1, 5), -np.inf, np.float32))
    field = {"shape": [-1, 10], "dtype": "float32", "lod_level": 0}
    parts = Sampled(4).encode(np.zeros((2, 10), np.float32))
    bad = {**parts, "counts": np.asarray(parts["counts"]) + 1}
    with pytest.raises(KnowledgeError, match="do not sum to n=4"):
        Sampled(4).sparse(bad, field)
    with pytest.raises(ConfigError, match="float logits"):
        Sampled(4).check("ids", {"shape": [-1, 10], "dtype": "int64", "lod_level": 0})


def test_densifying_too_much_is_a_knowledge_error_naming_the_sparse_form() -> None:
    big = SparseSamples(np.zeros((4, 2), np.int32), np.array([[2, 0]] * 4, np.uint8), 2**40, 2)
    with pytest.raises(KnowledgeError, match="sparse_topk=True"):
        big.dense()
