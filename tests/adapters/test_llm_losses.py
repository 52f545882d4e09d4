"""pantheon.torch LLM losses against dense references written with plain autograd (values and
gradients): forward KL, reverse KL, generalized JSD for dense, top-k (with and without tail),
sampled and hidden-state knowledge; masks; chunk sizes that divide V or not."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pantheon import ConfigError  # noqa: E402
from pantheon.torch import (  # noqa: E402
    dense_kd_loss,
    hidden_kd_loss,
    sampled_kd_loss,
    topk_kd_loss,
    topk_kl,
)

DIVS = ["forward_kl", "reverse_kl", "jsd"]
V = 37  # prime: no chunk size below divides it


def ref_rows(log_q: torch.Tensor, log_p: torch.Tensor, div: str, beta: float) -> torch.Tensor:
    """The divergence per row, straight from its definition (float64)."""
    q, p = log_q.exp(), log_p.exp()
    if div == "forward_kl":
        return torch.special.xlogy(q, q).sum(-1) - (q * log_p).sum(-1)
    if div == "reverse_kl":
        return (p * (log_p - log_q)).sum(-1)
    m = beta * q + (1 - beta) * p
    kl_qm = torch.special.xlogy(q, q).sum(-1) - torch.special.xlogy(q, m).sum(-1)
    kl_pm = (p * (log_p - m.log())).sum(-1)
    return beta * kl_qm + (1 - beta) * kl_pm


def ref_loss(s: torch.Tensor, t: torch.Tensor, div: str, beta: float, temp: float, mask=None):
    log_p = torch.log_softmax(s.double() / temp, -1)
    log_q = torch.log_softmax(t.double() / temp, -1)
    rows = ref_rows(log_q, log_p, div, beta) * temp**2
    if mask is None:
        return rows.mean()
    return (rows * mask).sum() / mask.sum()


def grad_of(fn, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = s.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward()
    return out.detach().double(), x.grad.double()


def close(a, b, rtol=2e-5, atol=2e-6) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, V, generator=g) * 2, torch.randn(3, 5, V, generator=g) * 3


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("temp", [1.0, 2.5])
@pytest.mark.parametrize(("pos_chunk", "voc_chunk"), [(1024, 8192), (4, 8), (1, 37), (7, 5)])
def test_dense_against_reference(logits, div, temp, pos_chunk, voc_chunk) -> None:
    s, t = logits
    beta = 0.3
    value, grad = grad_of(
        lambda x: dense_kd_loss(
            x,
            t,
            divergence=div,
            beta=beta,
            temperature=temp,
            position_chunk=pos_chunk,
            vocab_chunk=voc_chunk,
        ),
        s,
    )
    ref_value, ref_grad = grad_of(lambda x: ref_loss(x, t, div, beta, temp), s)
    close(value, ref_value)
    close(grad, ref_grad)


def test_dense_mask_excludes_padding_even_when_it_is_garbage(logits) -> None:
    s, t = logits
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 1:] = False
    t = t.clone()
    t[~mask] = float("nan")  # padding: never read
    for div in DIVS:
        value, grad = grad_of(lambda x, d=div: dense_kd_loss(x, t, divergence=d, mask=mask), s)
        ref_value, ref_grad = grad_of(lambda x, d=div: ref_loss(x[mask], t[mask], d, 0.5, 1.0), s)
        close(value, ref_value)
        close(grad, ref_grad)
        assert (grad[~mask] == 0).all()
    per = dense_kd_loss(s, t, mask=mask, reduction="none")
    assert per.shape == (3, 5) and (per[~mask] == 0).all()
    total = dense_kd_loss(s, t, mask=mask, reduction="sum")
    close(total, per.sum())
    close(dense_kd_loss(s, t, mask=mask, reduction="batchmean"), per.sum() / 3)


def test_dense_forward_kl_matches_soft_target_kl_with_minus_inf_teacher(logits) -> None:
    from pantheon.torch import soft_target_kl

    s, t = logits
    t = t.clone()
    t[..., ::3] = float("-inf")  # zero teacher mass: 0 log 0 = 0
    a, ga = grad_of(lambda x: dense_kd_loss(x, t, temperature=2.0, vocab_chunk=6), s)
    b, gb = grad_of(lambda x: soft_target_kl(x, t, temperature=2.0, reduction="mean"), s)
    close(a, b)
    close(ga, gb)
    jsd = dense_kd_loss(s, t, divergence="jsd")
    assert torch.isfinite(jsd)
    assert dense_kd_loss(s, t, divergence="reverse_kl").item() == math.inf  # KL(p || q), q = 0


def test_bfloat16_student_logits_get_a_bfloat16_gradient(logits) -> None:
    s, t = logits
    x = s.to(torch.bfloat16).requires_grad_(True)
    dense_kd_loss(x, t, vocab_chunk=10).backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    _, ref = grad_of(lambda y: ref_loss(y, t, "forward_kl", 0.5, 1.0), x.detach().float())
    close(x.grad, ref, rtol=2e-2, atol=2e-3)


# ---- hidden-state knowledge --------------------------------------------------------------------
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("voc_chunk", [5, 37, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_hidden_against_dense_reference(logits, div, voc_chunk, with_bias) -> None:
    s, _ = logits
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 5, 16, generator=g)
    weight = torch.randn(V, 16, generator=g) / 2
    bias = torch.randn(V, generator=g) if with_bias else None
    t = hidden @ weight.T + (bias if bias is not None else 0)
    mask = torch.rand(3, 5, generator=g) > 0.3
    value, grad = grad_of(
        lambda x: hidden_kd_loss(
            x,
            hidden,
            weight,
            bias,
            divergence=div,
            temperature=1.5,
            mask=mask,
            position_chunk=4,
            vocab_chunk=voc_chunk,
        ),
        s,
    )
    ref_value, ref_grad = grad_of(lambda x: ref_loss(x, t, div, 0.5, 1.5, mask.double()), s)
    close(value, ref_value, rtol=1e-4, atol=1e-5)
    close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_hidden_accepts_float16_hidden_states_and_head(logits) -> None:
    s, _ = logits
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 5, 8, generator=g).half()
    weight = torch.randn(V, 8, generator=g).half()
    t = hidden.float() @ weight.float().T
    close(hidden_kd_loss(s, hidden, weight, vocab_chunk=9), ref_loss(s, t, "forward_kl", 0, 1))


def _saved_numels(fn, x: torch.Tensor) -> list[int]:
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x).backward()
    return sizes


def _peak_cpu_bytes(fn) -> int:
    """The peak of the bytes torch allocated on the CPU while ``fn`` ran (profiler memory
    events, in order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # an operator's own allocations (its children count theirs), and the frees outside them
    changes = [
        (
            e.time_range.start,
            e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage,
        )
        for e in prof.events()
    ]
    level = peak = 0
    for _, change in sorted(c for c in changes if c[1] != 0):
        level += change
        peak = max(peak, level)
    return peak


def test_hidden_loss_memory_stays_bounded_by_the_chunks() -> None:
    """Nothing of positions x V is kept for the gradient but the student's own logits, and the
    peak of what the loss allocates is the gradient plus blocks, not the teacher's logits."""
    n, vocab, d = 128, 8_000, 32
    g = torch.Generator().manual_seed(3)
    s = torch.randn(n, vocab, generator=g)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(vocab, d, generator=g) / 4
    x = s.clone().requires_grad_(True)
    kw = {"position_chunk": 128, "vocab_chunk": 500}
    saved = _saved_numels(lambda y: hidden_kd_loss(y, hidden, weight, **kw), x)
    assert max(saved) == n * vocab  # the student's logits (a reference, not a copy)
    assert sorted(saved)[-2] <= n  # then per-position statistics only
    full = n * vocab * 4  # one float32 positions x V tensor: 4 MB

    def run() -> None:
        y = s.clone().requires_grad_(True)
        hidden_kd_loss(y, hidden, weight, **kw).backward()

    peak = _peak_cpu_bytes(run)
    # the clone and the gradient are two full tensors; every block is 64 x 1000 floats
    print("PEAK", peak / full)
    assert peak < 2 * full + 40 * 64 * 1000 * 4, peak / full

    def dense() -> None:
        y = s.clone().requires_grad_(True)
        t = hidden @ weight.T
        (torch.softmax(t, -1) * -torch.log_softmax(y, -1)).sum(-1).mean().backward()

    assert _peak_cpu_bytes(dense) > 4 * full  # the measurement sees materialised logits


def test_hidden_shape_errors(logits) -> None:
    s, _ = logits
    with pytest.raises(ConfigError, match=r"lm_head weight must be \[V, d\] with V = 37"):
        hidden_kd_loss(s, torch.zeros(3, 5, 4), torch.zeros(36, 4))
    with pytest.raises(ConfigError, match=r"teacher hidden states must be \[3, 5, 4\]"):
        hidden_kd_loss(s, torch.zeros(3, 4, 4), torch.zeros(V, 4))
    with pytest.raises(ConfigError, match=r"bias must be \[37\]"):
        hidden_kd_loss(s, torch.zeros(3, 5, 4), torch.zeros(V, 4), torch.zeros(4))
    with pytest.raises(ConfigError, match="vocab_chunk must be an int >= 1"):
        hidden_kd_loss(s, torch.zeros(3, 5, 4), torch.zeros(V, 4), vocab_chunk=0)


# ---- top-k -------------------------------------------------------------------------------------
K = 6


def topk_knowledge(t: torch.Tensor, temp: float = 1.0):
    """The teacher's top-k log-probabilities at T, their indices, and the log tail mass."""
    log_q = torch.log_softmax(t.double() / temp, -1)
    vals, idx = log_q.topk(K, -1)
    tail = torch.log1p(-vals.exp().sum(-1))
    return vals.float(), idx, tail.float()


def lumped_reference(s, t, idx, div, beta, tail: bool):
    """A dense teacher equivalent to the (k + 1)-category one: top-k entries as given, the rest
    of the mass spread like the student's (detached), so no divergence arises inside it."""
    log_p = torch.log_softmax(s.double(), -1)
    q_full = torch.softmax(t.double(), -1)
    q_k = q_full.gather(-1, idx)
    p = log_p.exp().detach()
    outside = torch.ones_like(p).scatter(-1, idx, 0.0)
    if tail:
        rest = 1 - q_k.sum(-1, keepdim=True)
        p_rest = (p * outside).sum(-1, keepdim=True)
        q_ref = (p * outside) * rest / p_rest
        q_ref = q_ref.scatter(-1, idx, q_k)
    else:
        q_ref = torch.zeros_like(p).scatter(-1, idx, q_k / q_k.sum(-1, keepdim=True))
    return ref_rows(q_ref.log(), log_p, div, beta).mean()


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("use_tail", [False, True])
def test_topk_against_dense_reference(logits, div, use_tail) -> None:
    s, t = logits
    vals, idx, tail = topk_knowledge(t)
    beta = 0.4
    value, grad = grad_of(
        lambda x: topk_kd_loss(
            x, vals, idx, tail if use_tail else None, divergence=div, beta=beta, vocab_chunk=8
        ),
        s,
    )
    if div == "reverse_kl" and not use_tail:  # both renormalised over the k entries
        sub = lambda x: x.gather(-1, idx)  # noqa: E731
        ref_value, ref_grad = grad_of(lambda x: ref_loss(sub(x), sub(t), div, beta, 1.0), s)
    else:
        ref_value, ref_grad = grad_of(lambda x: lumped_reference(x, t, idx, div, beta, use_tail), s)
    close(value, ref_value, rtol=1e-4, atol=1e-5)
    close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_topk_with_every_entry_is_the_dense_loss(logits) -> None:
    s, t = logits
    log_q = torch.log_softmax(t, -1)
    vals, idx = log_q.topk(V, -1)
    tail = torch.full(s.shape[:-1], -math.inf)
    for div in DIVS:
        # reverse KL against a tail of exactly 0 is infinite for any student mass rounding
        # leaves outside the k = V entries: that case is left out
        for tl in (None,) if div == "reverse_kl" else (None, tail):
            a, ga = grad_of(lambda x, d=div, tl=tl: topk_kd_loss(x, vals, idx, tl, divergence=d), s)
            b, gb = grad_of(lambda x, d=div: ref_loss(x, t, d, 0.5, 1.0), s)
            close(a, b, rtol=1e-4, atol=1e-5)
            close(ga, gb, rtol=1e-4, atol=1e-5)


def test_topk_forward_kl_without_tail_is_topk_kl(logits) -> None:
    s, t = logits
    vals, idx, _ = topk_knowledge(t)
    for temp in (1.0, 3.0):
        a, ga = grad_of(lambda x, tt=temp: topk_kd_loss(x, vals, idx, temperature=tt), s)
        b, gb = grad_of(
            lambda x, tt=temp: topk_kl(x, vals, idx, temperature=tt, reduction="mean"), s
        )
        close(a, b)
        close(ga, gb)


def test_topk_mask_and_errors(logits) -> None:
    s, t = logits
    vals, idx, tail = topk_knowledge(t)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[1] = True
    vals = vals.clone()
    vals[~mask] = float("nan")  # padding
    a, ga = grad_of(lambda x: topk_kd_loss(x, vals, idx, tail, mask=mask, divergence="jsd"), s)
    b, gb = grad_of(lambda x: topk_kd_loss(x[1], vals[1], idx[1], tail[1], divergence="jsd"), s)
    close(a, b)
    close(ga, gb)
    with pytest.raises(ConfigError, match=r"tail must be \[3, 5\]"):
        topk_kd_loss(s, vals, idx, tail[0])
    with pytest.raises(ConfigError, match="outside the student's vocabulary"):
        topk_kd_loss(s, vals, idx + V)
    with pytest.raises(ConfigError, match="0 < beta < 1"):
        topk_kd_loss(s, vals, idx, divergence="jsd", beta=1.0)
    with pytest.raises(ConfigError, match="divergence must be one of"):
        topk_kd_loss(s, vals, idx, divergence="kl")
    with pytest.raises(ConfigError, match="mask has shape"):
        topk_kd_loss(s, vals, idx, mask=mask[0])


# ---- sampled -----------------------------------------------------------------------------------
N_SAMPLES = 12


def draw(q: torch.Tensor, times: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``times`` draws of n samples per row of q ``[R, V]``: unique ids with counts, padded
    with count 0: ids, counts ``[times, R, n]``."""
    rows, vocab = q.shape
    flat = torch.multinomial(q.repeat(times, 1), N_SAMPLES, replacement=True, generator=g)
    dense = torch.zeros(rows * times, vocab).scatter_add_(1, flat, torch.ones_like(flat).float())
    counts, ids = dense.topk(N_SAMPLES, -1)  # the distinct ids first; count 0 after them
    assert (counts.sum(-1) == N_SAMPLES).all()
    return ids.reshape(times, rows, N_SAMPLES), counts.reshape(times, rows, N_SAMPLES)


def test_sampled_value_by_hand() -> None:
    s = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    ids = torch.tensor([[1, 0, 3]])
    counts = torch.tensor([[9, 3, 0]])
    log_p = torch.log_softmax(s, -1)[0]
    expected = 0.75 * (math.log(0.75) - log_p[1]) + 0.25 * (math.log(0.25) - log_p[0])
    assert sampled_kd_loss(s, ids, counts).item() == pytest.approx(float(expected), rel=1e-6)
    two = sampled_kd_loss(s, ids, counts, temperature=2.0)
    log_p2 = torch.log_softmax(s / 2, -1)[0]
    expected2 = 4 * (0.75 * (math.log(0.75) - log_p2[1]) + 0.25 * (math.log(0.25) - log_p2[0]))
    assert two.item() == pytest.approx(float(expected2), rel=1e-6)


def test_sampled_gradient_is_unbiased_for_the_dense_forward_kl() -> None:
    """Averaged over many draws, the sampled loss's gradient is the dense forward KL's, within
    a few standard errors per entry; top-n of the teacher (a biased target) is not."""
    g = torch.Generator().manual_seed(4)
    rows, vocab, times = 4, 50, 3000
    s = torch.randn(rows, vocab, generator=g)
    t = torch.randn(rows, vocab, generator=g) * 2
    q = torch.softmax(t.double(), -1)
    ids, counts = draw(q.float(), times, g)
    x = s.detach().clone().requires_grad_(True)
    big = x.expand(times, rows, vocab)
    sampled_kd_loss(big, ids, counts, reduction="sum").backward()
    mean_grad = x.grad.double() / times
    _, dense_grad = grad_of(lambda y: ref_loss(y, t, "forward_kl", 0.5, 1.0) * rows, s)
    se = (q * (1 - q) / (N_SAMPLES * times)).sqrt()  # standard error of the mean of counts/n
    z = (mean_grad - dense_grad).abs() / (se + 1e-12)
    assert z.max() < 5.5, float(z.max())
    top_vals, top_ids = q.topk(N_SAMPLES, -1)
    biased = s.detach().clone().requires_grad_(True)
    sampled_kd_loss(biased, top_ids, (top_vals * 1e6).round()).backward()
    z_biased = (biased.grad.double() * rows - dense_grad).abs() / (se + 1e-12)
    assert z_biased.max() > 20  # the statistic has the power to see a biased target


def test_sampled_masks_and_errors() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 3, 20, generator=g)
    q = torch.softmax(torch.randn(6, 20, generator=g), -1)
    ids, counts = draw(q, 1, g)
    ids, counts = ids.reshape(2, 3, N_SAMPLES), counts.reshape(2, 3, N_SAMPLES)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    counts = counts.clone()
    counts[~mask] = 0  # padding: no samples
    a, ga = grad_of(lambda x: sampled_kd_loss(x, ids, counts, mask=mask), s)
    b, gb = grad_of(lambda x: sampled_kd_loss(x[mask], ids[mask], counts[mask]), s)
    close(a, b)
    close(ga, gb)
    assert (ga[~mask] == 0).all()
    with pytest.raises(ConfigError, match="has no samples"):
        sampled_kd_loss(s, ids, counts)
    with pytest.raises(ConfigError, match="counts must be >= 0"):
        sampled_kd_loss(s, ids, -counts, mask=mask)
    with pytest.raises(ConfigError, match="sample ids must be integers"):
        sampled_kd_loss(s, ids.float(), counts, mask=mask)
    with pytest.raises(ConfigError, match=r"expected sample ids and counts \[..., n\]"):
        sampled_kd_loss(s, ids[..., :3], counts, mask=mask)


def test_losses_are_usable_from_numpy_knowledge() -> None:
    """Knowledge arrives as numpy arrays: torch.from_numpy views work as they are."""
    rng = np.random.default_rng(0)
    s = torch.randn(4, 30)
    vals = torch.from_numpy(rng.normal(size=(4, 5)).astype(np.float16))
    idx = torch.from_numpy(rng.choice(30, size=(4, 5)).astype(np.int32))
    assert torch.isfinite(topk_kd_loss(s, vals, idx))
