"""Top-k tiers: 8-bit values within their documented bound, the tail mass, the temperature."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantheon import ConfigError, KnowledgeError, Quant8, Ragged, SparseTopK, TopK
from pantheon._codecs import codec_from_spec
from pantheon._codecs.quant import dequantize, error_bound, quantize
from pantheon._knowledge import describe


def log_softmax(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    top = x64.max(axis=-1, keepdims=True)
    return x64 - top - np.log(np.exp(x64 - top).sum(axis=-1, keepdims=True))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 6),
    k=st.integers(1, 40),
    scale=st.floats(1e-3, 200.0),
    shift=st.floats(-1000.0, 1000.0),
    seed=st.integers(0, 2**32 - 1),
    neg_inf=st.integers(0, 3),
)
def test_quantization_error_is_within_the_documented_bound(
    rows: int, k: int, scale: float, shift: float, seed: int, neg_inf: int
) -> None:
    rng = np.random.default_rng(seed)
    v = -np.sort(-(rng.standard_normal((rows, k)) * scale + shift), axis=-1).astype(np.float32)
    v[:, max(0, k - neg_inf) :] = -np.inf  # masked entries at the end of the sorted rows
    codes, params = quantize(v)
    assert codes.dtype == np.uint8 and codes.shape == v.shape
    assert params.dtype == np.float16 and params.shape == (rows, 2)
    got = dequantize(codes, params)
    finite = np.isfinite(v)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    # docs: |decoded - v| <= step / 2 + 2**-11 * |max|, up to float32 rounding
    bound = error_bound(params)[:, None] + 1e-6 * (1 + np.abs(v))
    err = np.zeros_like(v)
    err[finite] = np.abs(got[finite] - v[finite])
    assert (err <= bound).all(), (err - bound).max()
    m = params[:, 0].astype(np.float32)  # the stored maximum, float16
    np.testing.assert_array_equal(m, np.where(finite[:, 0], v[:, 0], 0).astype(np.float16))
    low = np.where(finite, v, np.inf).min(axis=-1)
    low = np.where(np.isfinite(low), low, m)
    step = params[:, 1].astype(np.float32)
    # the step is (max - min) / 254 rounded up to a float16: not below it, at most 2**-10 above
    span = np.maximum(m - low, 0) / 254
    assert (step >= span).all()
    assert (step <= span * (1 + 2**-9) + 2**-24).all()


def test_quantization_refuses_nan_and_plus_inf() -> None:
    with pytest.raises(KnowledgeError, match="NaN or \\+inf"):
        quantize(np.array([[np.inf, 0.0]], np.float32))
    with pytest.raises(KnowledgeError, match="NaN"):
        quantize(np.array([[1.0, np.nan]], np.float32))


def test_uint8_topk_log_probs_round_trip_on_a_152k_vocabulary() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 151_936)) * 3).astype(np.float32)
    codec = TopK(16, values_dtype="uint8", log_softmax=True, tail=True)
    parts = codec.encode(x)
    assert parts["values"].dtype == np.uint8 and parts["values"].shape == (6, 16)
    assert parts["scale"].dtype == np.float16 and parts["scale"].shape == (6, 2)
    assert parts["indices"].shape == (6, 36)  # 16 indices at 18 bits
    assert parts["tail"].dtype == np.float16 and parts["tail"].shape == (6, 1)
    per_token = sum(np.asarray(p).nbytes for p in parts.values()) / 6
    assert per_token == 16 + 4 + 36 + 2
    sparse = codec.sparse(parts, describe({"x": x})["x"])
    assert sparse.holds == "logprobs" and sparse.temperature == 1.0
    ref = log_softmax(x)
    order = np.argsort(-ref, axis=-1)[:, :16]
    np.testing.assert_array_equal(sparse.indices, order)
    exact = np.take_along_axis(ref, order, axis=-1)
    bound = error_bound(parts["scale"])[:, None] + 1e-5
    assert (np.abs(sparse.values - exact) <= bound).all()
    # the tail: log(1 - sum p) of the exact top-16, from the full distribution
    mass = np.exp(exact).sum(axis=-1)
    assert sparse.tail is not None
    np.testing.assert_allclose(sparse.tail[:, 0], np.log1p(-mass), rtol=2e-3)


@pytest.mark.parametrize("log_softmax_values", [True, False])
def test_tail_is_the_logsumexp_outside_the_topk_in_the_values_units(
    log_softmax_values: bool,
) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5, 300)) * 4).astype(np.float32)
    x[0, 3:] = -np.inf  # a position whose mass is all in the top-k: tail -inf
    codec = TopK(3, values_dtype="float32", log_softmax=log_softmax_values, tail=True)
    parts = codec.encode(x)
    sparse = codec.sparse(parts, describe({"x": x})["x"])
    units = log_softmax(x) if log_softmax_values else x.astype(np.float64)
    rest = units.copy()
    np.put_along_axis(rest, np.asarray(sparse.indices, np.intp), -np.inf, axis=-1)
    with np.errstate(divide="ignore"):
        expected = np.log(np.exp(rest).sum(axis=-1))
    assert sparse.tail is not None
    assert sparse.tail[0, 0] == -np.inf
    np.testing.assert_allclose(sparse.tail[1:, 0], expected[1:], rtol=1e-5)
    if log_softmax_values:  # the kept mass and the tail add up to 1
        total = np.exp(sparse.values).sum(-1) + np.exp(sparse.tail[:, 0])
        np.testing.assert_allclose(total, 1.0, rtol=1e-5)


def test_temperature_divides_the_logits_before_everything() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 50)).astype(np.float32)
    codec = TopK(5, values_dtype="float32", log_softmax=True, temperature=2.0)
    sparse = codec.sparse(codec.encode(x), describe({"x": x})["x"])
    ref = log_softmax(x / 2.0)
    np.testing.assert_allclose(sparse.values, -np.sort(-ref, axis=-1)[:, :5], rtol=1e-5, atol=1e-6)
    assert sparse.temperature == 2.0
    assert codec.spec()["temperature"] == 2.0 and codec.spec()["holds"] == "logprobs"
    raw = TopK(5, values_dtype="float32", temperature=4.0)
    got = raw.encode(x)["values"]
    np.testing.assert_allclose(got, -np.sort(-x / 4.0, axis=-1)[:, :5], rtol=1e-6)
    assert raw.spec()["holds"] == "logits"
    rebuilt = codec_from_spec(codec.spec())
    assert isinstance(rebuilt, TopK) and rebuilt.temperature == 2.0
    with pytest.raises(Exception, match="temperature must be a number > 0"):
        TopK(3, temperature=0)


def test_ragged_tiers_keep_the_lengths_and_sparse_forms_rebatch() -> None:
    rng = np.random.default_rng(6)
    field = Ragged.from_list([rng.standard_normal((n, 1000)).astype(np.float32) for n in (3, 0, 5)])
    codec = TopK(4, values_dtype="uint8", log_softmax=True, tail=True)
    parts = codec.encode(field)
    for part in parts.values():
        assert isinstance(part, Ragged) and part.lengths.tolist() == [3, 0, 5]
    sparse = codec.sparse(parts, describe({"l": field})["l"])
    both = SparseTopK.concat([sparse.slice(0, 2), sparse.slice(2, 3)])
    assert isinstance(both.tail, Ragged) and both.tail.lengths.tolist() == [3, 0, 5]
    picked = sparse.take(np.array([2, 0]))
    assert isinstance(picked.values, Ragged) and picked.values.lengths.tolist() == [5, 3]
    dense = codec.decode(parts, describe({"l": field})["l"])
    assert isinstance(dense, Ragged) and dense.values.shape == (8, 1000)
    assert (np.isfinite(dense.values).sum(axis=-1) == 4).all()


def test_quant8_stores_any_rows_within_the_bound_and_refuses_other_specs() -> None:
    """Quant8 on unsorted rows (the maximum anywhere), dense and ragged, through a file."""
    rng = np.random.default_rng(12)
    v = (rng.standard_normal((5, 3, 9)) * 4 - 3).astype(np.float32)
    v[0, 0, 4] = -np.inf
    codec = Quant8()
    parts = codec.encode(v)
    assert parts["codes"].dtype == np.uint8 and parts["scale"].shape == (5, 3, 2)
    got = codec.decode(parts, describe({"v": v})["v"])
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got[0, 0, 4] == -np.inf
    finite = np.isfinite(v)
    bound = np.broadcast_to(error_bound(parts["scale"])[..., None], v.shape) + 1e-5
    assert (np.abs(got[finite] - v[finite]) <= bound[finite]).all()
    ragged = Ragged.from_list([v[0], v[1, :0], v[2]])
    back = codec.decode(codec.encode(ragged), describe({"r": ragged})["r"])
    assert isinstance(back, Ragged) and back.lengths.tolist() == [3, 0, 3]
    assert codec_from_spec(codec.spec()).spec() == {"name": "quant8", "version": 1}
    with pytest.raises(ConfigError, match="no parameters"):
        codec_from_spec({"name": "quant8", "step": 1})
    with pytest.raises(ConfigError, match="float fields"):
        codec.check("ids", {"shape": [-1, 4], "dtype": "int32", "lod_level": 0})
