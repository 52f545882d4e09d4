"""pantheon.hf: a causal LM teacher giving top-k log-probabilities per token (tiny random model)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pantheon import ConfigError, Ragged  # noqa: E402
from pantheon.hf import causal_lm_topk_program  # noqa: E402
from tests.helpers import query_handler, round_factory  # noqa: E402

K = 5
VOCAB = 1000
# Padded batches and single unpadded sequences take different kernels: log-probs agree to
# about 1e-5 in float32; compare with this tolerance.
ATOL = 1e-4
SCHEMA = {"tokens": "input_ids", "topk_logprobs": "topk_logprobs", "topk_indices": "topk_indices"}


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(1, VOCAB, size=n).astype(np.int64) for n in (5, 9, 1, 7, 12, 3, 8)]


def reference(model: Any, seq: np.ndarray) -> np.ndarray:
    """Full-vocabulary log-probs of one unpadded sequence, [len, V]."""
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(seq)[None]).logits[0]
    logp: np.ndarray = torch.log_softmax(out.float(), dim=-1).numpy()
    return logp


def check_against_model(model: Any, seqs: list[np.ndarray], vals: Ragged, idx: Ragged) -> None:
    assert vals.lengths.tolist() == [len(s) for s in seqs]
    assert vals.inner_shape == (K,)
    assert vals.dtype == np.float32
    assert idx.dtype == np.int32
    for seq, v, i in zip(seqs, vals.to_list(), idx.to_list(), strict=True):
        full = reference(model, seq)
        best = -np.sort(-full, axis=-1)[:, :K]
        np.testing.assert_allclose(v, best, atol=ATOL)  # the k largest, sorted
        np.testing.assert_allclose(np.take_along_axis(full, i, axis=-1), v, atol=ATOL)


def test_causal_lm_topk_through_the_service(model: Any) -> None:
    seqs = sequences()
    cfg = {"sample_generator": lambda: ((s,) for s in seqs), "batch_size": 3, "drop_last": False}
    program = causal_lm_topk_program(model, k=K)
    chunks = list(round_factory(["input_ids"], SCHEMA, program, cfg, exe=2)(0))
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), np.arange(len(seqs)))
    vals = Ragged.concat([c.data["topk_logprobs"] for c in chunks])  # type: ignore[misc]
    idx = Ragged.concat([c.data["topk_indices"] for c in chunks])  # type: ignore[misc]
    tokens = Ragged.concat([c.data["tokens"] for c in chunks])  # type: ignore[misc]
    for a, b in zip(tokens.to_list(), seqs, strict=True):
        np.testing.assert_array_equal(a, b)
    check_against_model(model, seqs, vals, idx)


def test_padded_input_with_lengths_and_attention_mask(model: Any) -> None:
    seqs = sequences()[:4]
    padded, lengths = Ragged.from_list(seqs).padded(0)
    program = causal_lm_topk_program(model, k=K, lengths_feed="lengths")
    out = query_handler(["input_ids", "lengths"], SCHEMA, program)(
        {"input_ids": padded, "lengths": lengths}
    )
    check_against_model(model, seqs, out["topk_logprobs"], out["topk_indices"])  # type: ignore[arg-type]
    mask = (np.arange(padded.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    out = query_handler(
        ["input_ids", "attention_mask"],
        {"v": "topk_logprobs", "i": "topk_indices"},
        causal_lm_topk_program(model, k=K),
    )({"input_ids": padded, "attention_mask": mask})
    check_against_model(model, seqs, out["v"], out["i"])  # type: ignore[arg-type]


def test_empty_sequences_and_errors(model: Any) -> None:
    seqs = [np.zeros(0, np.int64), np.array([5, 6, 7]), np.zeros(0, np.int64)]
    handle = query_handler(
        ["input_ids"], {"v": "topk_logprobs"}, causal_lm_topk_program(model, k=K)
    )
    out = handle({"input_ids": seqs})["v"]
    assert isinstance(out, Ragged)
    assert out.lengths.tolist() == [0, 3, 0]
    np.testing.assert_allclose(out.values, -np.sort(-reference(model, seqs[1]))[:, :K], atol=ATOL)
    with pytest.raises(ConfigError, match="k must"):
        causal_lm_topk_program(model, k=0)
    with pytest.raises(ConfigError, match="torch causal LM"):
        causal_lm_topk_program(object())
    with pytest.raises(ConfigError, match="larger than the model's vocabulary"):
        query_handler(
            ["input_ids"], {"v": "topk_logprobs"}, causal_lm_topk_program(model, k=VOCAB + 1)
        )({"input_ids": seqs})


def iter_sequences() -> Iterator[tuple[np.ndarray]]:
    for s in sequences():
        yield (s,)


def test_start_sample_resumes_mid_round(model: Any) -> None:
    cfg = {"sample_generator": iter_sequences, "batch_size": 3, "ragged_feeds": ["input_ids"]}
    make_round = round_factory(["input_ids"], SCHEMA, causal_lm_topk_program(model, k=K), cfg)
    full = list(make_round(0))
    resumed = list(make_round(0, 4))
    assert [c.ids.tolist() for c in resumed] == [[4, 5]]
    a = full[1].data["topk_logprobs"]
    b = resumed[0].data["topk_logprobs"]
    assert isinstance(a, Ragged)
    assert isinstance(b, Ragged)
    np.testing.assert_array_equal(a.slice(1, 3).values, b.values)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_causal_lm_on_cuda(model: Any) -> None:
    seqs = sequences()
    cfg = {"sample_generator": lambda: ((s,) for s in seqs), "batch_size": 4, "drop_last": False}
    program = causal_lm_topk_program(model, k=K)
    chunks = list(round_factory(["input_ids"], SCHEMA, program, cfg, exe="cuda:0")(0))
    vals = Ragged.concat([c.data["topk_logprobs"] for c in chunks])  # type: ignore[misc]
    idx = Ragged.concat([c.data["topk_indices"] for c in chunks])  # type: ignore[misc]
    check_against_model(model, seqs, vals, idx)


def test_knowledge_stored_at_its_width_with_the_tail(model: Any, tmp_path: Any) -> None:
    """The program's codecs: indices bit-packed at ceil(log2(V)) = 10 bits, float16
    log-probabilities, int32 token ids; the tail is log(1 - sum p) of the full distribution."""
    from pantheon import KnowledgeFile, Packed, Teacher

    seqs = sequences()
    program = causal_lm_topk_program(model, k=K, tail=True)
    codecs = program.codecs(ids_key="tokens")
    assert codecs["topk_indices"].spec() == Packed(10).spec()
    path = tmp_path / "k.arrow"
    schema = {**SCHEMA, "topk_tail": "topk_tail"}
    with Teacher(out_path=path, codecs=codecs) as teacher:
        teacher.start()
        teacher.start_knowledge_service(
            feed_list=["input_ids"],
            schema=schema,
            program=program,
            reader_config={
                "sample_generator": lambda: ((s,) for s in seqs),
                "batch_size": 3,
                "drop_last": False,
            },
        )
    with KnowledgeFile(path) as kf:
        dtypes = {k: [c["dtype"] for c in kf.storage[k]["columns"]] for k in kf.desc}
        assert dtypes == {
            "tokens": ["int32"],
            "topk_logprobs": ["float16"],
            "topk_indices": ["uint8"],
            "topk_tail": ["float32"],
        }
        assert kf.storage["topk_indices"]["columns"][0]["shape"] == [-1, -1, 7]  # 5 x 10 bits
        assert kf.desc["topk_indices"]["dtype"] == "int32"
        data = [c.data for c in kf.iter_chunks()]
    vals = Ragged.concat([d["topk_logprobs"] for d in data])  # type: ignore[misc]
    idx = Ragged.concat([d["topk_indices"] for d in data])  # type: ignore[misc]
    tail = Ragged.concat([d["topk_tail"] for d in data])  # type: ignore[misc]
    assert idx.dtype == np.int32
    for seq, v, i, t in zip(seqs, vals.to_list(), idx.to_list(), tail.to_list(), strict=True):
        full = reference(model, seq)
        np.testing.assert_allclose(np.take_along_axis(full, i, axis=-1), v, atol=2e-3)
        rest = full.copy()
        np.put_along_axis(rest, i.astype(np.intp), -np.inf, axis=-1)
        np.testing.assert_allclose(t[:, 0], np.log(np.exp(rest).sum(-1)), atol=ATOL)


def test_uint8_log_probs_of_the_program(model: Any) -> None:
    from pantheon import Quant8

    program = causal_lm_topk_program(model, k=K)
    codecs = program.codecs(values="uint8")
    assert isinstance(codecs["topk_logprobs"], Quant8)
    seqs = sequences()[:3]
    out = query_handler(["input_ids"], SCHEMA, program)({"input_ids": seqs})
    vals = out["topk_logprobs"]
    assert isinstance(vals, Ragged)
    parts = codecs["topk_logprobs"].encode(vals)
    field = {"shape": [-1, -1, K], "dtype": "float32", "lod_level": 1}
    back = codecs["topk_logprobs"].decode(parts, field)
    assert isinstance(back, Ragged)
    span = vals.values.max(-1) - vals.values.min(-1)
    assert (np.abs(back.values - vals.values).max(-1) <= span / 254 + 1e-2).all()
