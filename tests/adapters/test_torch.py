"""pantheon.torch: torch teachers in the knowledge service, the student's dataset, KD losses."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pantheon import ConfigError, Ragged  # noqa: E402
from pantheon._knowledge import BFLOAT16  # noqa: E402
from pantheon.torch import (  # noqa: E402
    KnowledgeDataset,
    TorchProgram,
    feature_mse,
    soft_target_kl,
    to_tensor,
    topk_kl,
)
from tests.helpers import query_handler, round_factory  # noqa: E402

# float32 results of the same module on the same CPU may differ in the last bits when the
# number of intra-op threads differs (workers > 1 limit them): compare with these tolerances.
RTOL, ATOL = 1e-5, 1e-6


def mlp() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    ).train()


def features() -> Iterator[tuple[np.ndarray]]:
    rng = np.random.default_rng(0)
    for _ in range(37):
        yield (rng.standard_normal(8).astype(np.float32),)


def direct(module: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = module(torch.from_numpy(x)).numpy()
    return out


def gather(chunks: list[Any], key: str) -> np.ndarray:
    return np.concatenate([c.data[key] for c in chunks])


@pytest.mark.parametrize("exe", [None, 2, ["cpu", "cpu", "cpu"]])
def test_module_program_matches_the_module(exe: Any) -> None:
    module = mlp()
    cfg = {"sample_generator": features, "batch_size": 5, "drop_last": False}
    make_round = round_factory(["x"], {"x": "x", "logits": "output"}, module, cfg, exe)
    chunks = list(make_round(0))
    x = gather(chunks, "x")
    assert x.shape == (37, 8)
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), np.arange(37))
    logits = gather(chunks, "logits")
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, direct(module.eval(), x), rtol=RTOL, atol=ATOL)
    assert module.training is False  # the service puts the module in eval mode


def test_module_outputs_tuple_dict_and_bfloat16() -> None:
    class Multi(torch.nn.Module):
        def forward(self, a: Any, b: Any) -> Any:
            return a * 2, {"ignored": a}, (a + b).to(torch.bfloat16)

    class Named(torch.nn.Module):
        def forward(self, a: Any, b: Any) -> Any:
            return {"sum": a + b, "bf": (a * b).to(torch.bfloat16)}

    def batches() -> Iterator[dict[str, np.ndarray]]:
        yield {"a": np.ones((3, 2), np.float32), "b": np.full((3, 2), 2, np.float32)}

    cfg = {"batch_generator": batches}
    chunk = next(round_factory(["a", "b"], {"o": "output0"}, Multi(), cfg)(0))
    np.testing.assert_array_equal(chunk.data["o"], np.full((3, 2), 2))
    chunk = next(round_factory(["a", "b"], {"s": "sum", "bf": "bf"}, Named(), cfg)(0))
    np.testing.assert_array_equal(chunk.data["s"], np.full((3, 2), 3))
    assert chunk.data["bf"].dtype == BFLOAT16
    np.testing.assert_array_equal(chunk.data["bf"].astype(np.float32), np.full((3, 2), 2))


def test_workers_get_copies_and_the_first_uses_the_module() -> None:
    module = mlp()
    program = TorchProgram(module, ["x"])
    first = program.for_device("cpu")
    second = program.for_device("cpu")
    assert first.module is module
    assert second.module is not module
    assert all(
        a.data_ptr() != b.data_ptr()
        for a, b in zip(module.parameters(), second.module.parameters(), strict=True)
    )


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_torchscript_file_program(tmp_path: Path) -> None:
    module = mlp().eval()
    path = tmp_path / "teacher.pt"
    torch.jit.script(module).save(str(path))
    cfg = {"sample_generator": features, "batch_size": 8}
    chunks = list(round_factory(["x"], {"x": "x", "y": "output"}, str(path), cfg, 2)(0))
    x = gather(chunks, "x")
    np.testing.assert_allclose(gather(chunks, "y"), direct(module, x), rtol=RTOL, atol=ATOL)


def test_ragged_feed_to_a_module_is_a_config_error() -> None:
    seqs = [np.arange(n, dtype=np.float32) for n in (1, 2)]
    cfg = {"sample_generator": lambda: ((s,) for s in seqs), "batch_size": 2}
    with pytest.raises(ConfigError, match="variable-length"):
        next(round_factory(["t"], {"y": "output"}, torch.nn.Identity(), cfg)(0))


def test_query_handler_with_module() -> None:
    module = mlp()
    handle = query_handler(["x"], {"logits": "output"}, module, exe=["cpu", "cpu"])
    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    for _ in range(3):
        np.testing.assert_allclose(
            handle({"x": x})["logits"], direct(module, x), rtol=RTOL, atol=ATOL
        )


# ---- KnowledgeDataset ------------------------------------------------------------------------
def test_knowledge_dataset_with_a_dataloader() -> None:
    logits = np.arange(12, dtype=np.float32).reshape(3, 4)
    frozen = np.arange(3, dtype=np.int64)
    frozen.flags.writeable = False
    tokens = Ragged.from_list([np.array([1, 2]), np.array([3]), np.array([4, 5, 6])])

    def generator() -> Iterator[dict[str, Any]]:
        for _ in range(2):
            yield {"logits": logits, "ids": frozen, "tokens": tokens}

    ds = KnowledgeDataset(lambda: generator(), ragged_fill=-1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert isinstance(b["logits"], torch.Tensor)
    assert np.shares_memory(b["logits"].numpy(), logits)  # zero copy
    assert np.shares_memory(b["ids"].numpy(), frozen)
    padded, lengths = b["tokens"]
    assert padded.tolist() == [[1, 2, -1], [3, -1, -1], [4, 5, 6]]
    assert lengths.tolist() == [2, 1, 3]
    assert list(loader)[1]["logits"].shape == (3, 4)  # a second pass starts a new round


def test_knowledge_dataset_rejects_non_callables_and_bfloat16_tensors() -> None:
    with pytest.raises(ConfigError, match="reader creator"):
        KnowledgeDataset([{"a": np.zeros(1)}])  # type: ignore[arg-type]
    bf = np.arange(4, dtype=np.float32).astype(BFLOAT16)
    t = to_tensor(bf)
    assert t.dtype == torch.bfloat16
    assert t.float().tolist() == [0, 1, 2, 3]


# ---- losses ----------------------------------------------------------------------------------
def test_soft_target_kl_hand_computed() -> None:
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # q = [0.75, 0.25], p = [0.5, 0.5]
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812...
    assert soft_target_kl(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert soft_target_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # T = 2: q = softmax([ln3/2, 0]) = [sqrt3, 1]/(sqrt3 + 1), times T^2 = 4
    r3 = math.sqrt(3.0)
    q = [r3 / (r3 + 1), 1 / (r3 + 1)]
    kl_t2 = 4 * sum(qi * math.log(qi / 0.5) for qi in q)
    assert soft_target_kl(s, t, temperature=2.0).item() == pytest.approx(kl_t2, rel=1e-6)


def test_soft_target_kl_reductions_and_mask() -> None:
    s = torch.zeros(2, 3, 2)
    t = torch.tensor([math.log(3.0), 0.0]).expand(2, 3, 2)
    per = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert soft_target_kl(s, t, reduction="none").shape == (2, 3)
    assert soft_target_kl(s, t, reduction="sum").item() == pytest.approx(6 * per, rel=1e-6)
    assert soft_target_kl(s, t, reduction="batchmean").item() == pytest.approx(3 * per, rel=1e-6)
    assert soft_target_kl(s, t, reduction="mean").item() == pytest.approx(per, rel=1e-6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert soft_target_kl(s, t, reduction="mean", mask=mask).item() == pytest.approx(per, rel=1e-6)
    assert soft_target_kl(s, t, reduction="sum", mask=mask).item() == pytest.approx(
        3 * per, rel=1e-6
    )
    with pytest.raises(ConfigError, match="reduction"):
        soft_target_kl(s, t, reduction="avg")
    with pytest.raises(ConfigError, match="same shape"):
        soft_target_kl(s, t[..., :1])


def test_soft_target_kl_accepts_minus_inf_teacher_and_gives_gradients() -> None:
    s = torch.zeros(1, 3, requires_grad=True)
    t = torch.tensor([[0.0, -math.inf, 0.0]])  # q = [0.5, 0, 0.5], p = 1/3 each
    loss = soft_target_kl(s, t)
    assert loss.item() == pytest.approx(math.log(1.5), rel=1e-6)
    loss.backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all()


def test_topk_kl_hand_computed() -> None:
    s = torch.zeros(1, 4)  # p = 0.25 everywhere
    values = torch.tensor([[math.log(3.0), 0.0]])  # q = [0.75, 0.25] on indices [2, 0]
    indices = torch.tensor([[2, 0]], dtype=torch.int32)
    expected = 0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.25)
    assert topk_kl(s, values, indices).item() == pytest.approx(expected, rel=1e-6)
    # log-probabilities instead of logits: the same renormalised q
    logp = values - torch.logsumexp(torch.tensor([math.log(3.0), 0.0, 5.0]), 0)
    assert topk_kl(s, logp, indices).item() == pytest.approx(expected, rel=1e-6)


def test_topk_kl_with_all_entries_equals_soft_target_kl() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 7, generator=g)
    t = torch.randn(3, 5, 7, generator=g)
    vals, idx = torch.topk(t, 7, dim=-1)
    for temp in (1.0, 2.5):
        a = topk_kl(s, vals, idx, temperature=temp, reduction="mean")
        b = soft_target_kl(s, t, temperature=temp, reduction="mean")
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="topk_values"):
        topk_kl(s, vals[..., :2], idx)


def test_feature_mse_hand_computed() -> None:
    s = torch.tensor([[1.0, 2.0]])
    t = torch.tensor([[0.0, 4.0]])
    assert feature_mse(s, t).item() == pytest.approx(2.5)
    assert feature_mse(s, t, reduction="sum").item() == pytest.approx(5.0)
    assert feature_mse(s, t, reduction="none").tolist() == [[1.0, 4.0]]
    proj = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    t3 = torch.tensor([[1.0, 2.0, 0.0]])  # proj(s) = [1, 2, 3]: error only on the last, 9 / 3
    assert feature_mse(s, t3, projection=proj).item() == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="projection"):
        feature_mse(s, t3)


# ---- on a CUDA device (skipped without one) --------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_module_on_cuda_matches_cpu() -> None:
    module = mlp().eval()
    cfg = {"sample_generator": features, "batch_size": 8, "drop_last": False}
    schema = {"x": "x", "logits": "output"}
    chunks = list(round_factory(["x"], schema, module, cfg, exe=["cuda:0", "cpu"])(0))
    x = gather(chunks, "x")
    # cuBLAS and the CPU kernels round differently (TF32 is off by default for matmul)
    np.testing.assert_allclose(gather(chunks, "logits"), direct(module, x), rtol=1e-4, atol=1e-5)
    assert next(module.parameters()).device.type == "cpu"  # the module itself stayed put

    class Half(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return (x * 2).to(torch.bfloat16)

    out = next(round_factory(["x"], {"h": "output"}, Half(), cfg, exe="cuda:0")(0))
    assert out.data["h"].dtype == BFLOAT16


@pytest.mark.gpu
@cuda
def test_knowledge_dataset_pins_memory() -> None:
    ds = KnowledgeDataset(lambda: iter([{"a": np.ones((2, 3), np.float32)}]), pin_memory=True)
    (batch,) = list(torch.utils.data.DataLoader(ds, batch_size=None))
    assert batch["a"].is_pinned()
