"""Hidden-state knowledge: pantheon.hf's hidden program and lm_head side file, pantheon.torch's
load_lm_head and hidden_kd_loss, through a real knowledge file (tiny random Llama)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pantheon import ConfigError, FileFormatError, KnowledgeFile, Ragged, Teacher  # noqa: E402
from pantheon.hf import causal_lm_hidden_program, save_lm_head  # noqa: E402
from pantheon.torch import LMHead, dense_kd_loss, hidden_kd_loss, load_lm_head  # noqa: E402
from tests.helpers import query_handler  # noqa: E402

VOCAB = 300


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
    return [rng.integers(1, VOCAB, size=n).astype(np.int64) for n in (5, 9, 1, 7, 12, 3)]


def logits_of(model: Any, seq: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=torch.from_numpy(seq)[None]).logits[0].float()
    return out


def test_hidden_knowledge_file_and_lm_head_give_the_teachers_distribution(
    model: Any, tmp_path: Path
) -> None:
    seqs = sequences()
    path = tmp_path / "hidden.arrow"
    with Teacher(out_path=str(path)) as teacher:
        teacher.start_knowledge_service(
            feed_list=["input_ids"],
            schema={"hidden": "hidden"},
            program=causal_lm_hidden_program(model),
            reader_config={
                "sample_generator": lambda: ((s,) for s in seqs),
                "batch_size": 4,
                "drop_last": False,
            },
        )
    head_path = tmp_path / "lm_head.npz"
    save_lm_head(model, head_path)
    head = load_lm_head(head_path)
    assert isinstance(head, LMHead)
    assert head.weight.shape == (VOCAB, 32) and head.weight.dtype == torch.float32
    assert head.bias is None
    with KnowledgeFile(path) as kf:
        assert kf.desc["hidden"] == {"shape": [-1, -1, 32], "dtype": "float32", "lod_level": 1}
        hidden = kf.take(np.arange(len(seqs)))["hidden"]
    assert isinstance(hidden, Ragged)
    assert hidden.lengths.tolist() == [len(s) for s in seqs]
    g = torch.Generator().manual_seed(0)
    for seq, h in zip(seqs, hidden.to_list(), strict=True):
        t = logits_of(model, seq)
        ht = torch.from_numpy(np.ascontiguousarray(h))
        torch.testing.assert_close(ht @ head.weight.T, t, rtol=1e-4, atol=1e-4)
        student = torch.randn(len(seq), VOCAB, generator=g)
        for div in ("forward_kl", "reverse_kl", "jsd"):
            torch.testing.assert_close(
                hidden_kd_loss(student, ht, head.weight, divergence=div, vocab_chunk=64),
                dense_kd_loss(student, t, divergence=div),
                rtol=1e-4,
                atol=1e-5,
            )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_hidden_states(model: Any, dtype: str) -> None:
    seqs = sequences()[:3]
    out = query_handler(
        ["input_ids"], {"h": "hidden"}, causal_lm_hidden_program(model, dtype=dtype)
    )({"input_ids": seqs})["h"]
    assert isinstance(out, Ragged)
    assert out.dtype.name == dtype
    head = model.get_output_embeddings().weight.detach()
    for seq, h in zip(seqs, out.to_list(), strict=True):
        ht = torch.from_numpy(np.asarray(h, dtype=np.float32))
        torch.testing.assert_close(ht @ head.T, logits_of(model, seq), rtol=0.05, atol=0.05)


def test_empty_sequences(model: Any) -> None:
    handle = query_handler(["input_ids"], {"h": "hidden"}, causal_lm_hidden_program(model))
    out = handle({"input_ids": [np.zeros(0, np.int64), np.zeros(0, np.int64)]})["h"]
    assert isinstance(out, Ragged)
    assert out.lengths.tolist() == [0, 0] and out.inner_shape == (32,)


class ScaledLogits(torch.nn.Module):
    """A model whose logits are not its lm_head of its last hidden state (as with soft-capping)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self) -> Any:
        return self.inner.get_output_embeddings()

    def forward(self, **kw: Any) -> Any:
        out = self.inner(**kw)
        return types.SimpleNamespace(logits=out.logits * 2, hidden_states=out.hidden_states)


def test_a_model_with_transformed_logits_is_refused(model: Any) -> None:
    program = causal_lm_hidden_program(ScaledLogits(model))
    handle = query_handler(["input_ids"], {"h": "hidden"}, program)
    with pytest.raises(ConfigError, match="soft-capping or scaling"):
        handle({"input_ids": sequences()[:2]})
    unchecked = causal_lm_hidden_program(ScaledLogits(model), check_logits=False)
    query_handler(["input_ids"], {"h": "hidden"}, unchecked)({"input_ids": sequences()[:2]})
    with pytest.raises(ConfigError, match="dtype must be one of"):
        causal_lm_hidden_program(model, dtype="int8")
    with pytest.raises(ConfigError, match="torch causal LM"):
        causal_lm_hidden_program(object())


def test_lm_head_side_file_with_bias_and_refusals(tmp_path: Path) -> None:
    linear = torch.nn.Linear(8, 50).half()
    save_lm_head(linear, tmp_path / "h.npz")
    head = load_lm_head(tmp_path / "h.npz", dtype=torch.float32)
    assert head.bias is not None and head.bias.shape == (50,)
    torch.testing.assert_close(head.weight, linear.weight.detach().float())
    torch.testing.assert_close(head.bias, linear.bias.detach().float())
    save_lm_head(torch.nn.Linear(8, 50).to(torch.bfloat16), tmp_path / "b.npz")
    assert load_lm_head(tmp_path / "b.npz").weight.dtype == torch.float32  # bf16: exact in f32
    with pytest.raises(ConfigError, match="get_output_embeddings"):
        save_lm_head(object(), tmp_path / "x.npz")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        save_lm_head(linear, tmp_path / "x.npz", dtype="int8")

    objects = tmp_path / "objects.npz"
    np.savez(objects, weight=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FileFormatError, match="not a readable lm_head file"):
        load_lm_head(objects)  # nothing is unpickled
    extra = tmp_path / "extra.npz"
    np.savez(extra, weight=np.zeros((4, 2), np.float32), other=np.zeros(3))
    with pytest.raises(FileFormatError, match=r"expected the arrays 'weight'"):
        load_lm_head(extra)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, weight=np.zeros((4, 2), np.float32), bias=np.zeros(3, np.float32))
    with pytest.raises(FileFormatError, match=r"bias must be \[4\]"):
        load_lm_head(wrong)
    ints = tmp_path / "ints.npz"
    np.savez(ints, weight=np.zeros((4, 2), np.int64))
    with pytest.raises(FileFormatError, match="float16 or float32"):
        load_lm_head(ints)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((4, 2), np.float32))
    with pytest.raises(FileFormatError, match="found a single array"):
        load_lm_head(single)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FileFormatError, match="not a readable lm_head file"):
        load_lm_head(garbage)
