"""How much KD quality each knowledge tier keeps: a small causal LM distilled on CPU.

Everything is built here from text every machine has, the Python standard library's sources
(``sysconfig.get_paths()["stdlib"]``, ``.py`` files in sorted order, split by file into the
teacher's training text, the distillation text and the held-out text):

1. a byte-level BPE tokenizer (``tokenizers``, ``--vocab`` 32,000 entries) trained on the
   teacher's text (70 % of the files among the first 9 MiB of sources);
2. a teacher causal LM (plain torch: 2 pre-norm transformer layers of width 128, context 64
   tokens) trained on it (400 steps of 16 windows, AdamW);
3. its knowledge of the distillation text, dumped by ``Teacher(out_path=...).dump`` through each
   codec and read back with ``KnowledgeFile(..., sparse_topk=True).take`` as users do:

   ``hidden fp16``    the teacher's last hidden state (float16 cast) + its ``lm_head`` side
                      file: exact knowledge, ``hidden_kd_loss`` (forward KL);
   ``fp16 top-16``    ``TopK(16, log_softmax=True)``: ``topk_kd_loss`` without tail;
   ``int8 top-14+tail`` ``TopK(14, values_dtype="uint8", tail=True, log_softmax=True)``:
                      ``topk_kd_loss`` with the tail bucket (the largest k under 50 bytes
                      per token at 15-bit indices);
   ``sampled n=12``   ``Sampled(12, seed=--seed)``: ``sampled_kd_loss`` (counts / n as the
                      target, unbiased for the teacher's distribution; 12 draws per position
                      as Anshumann et al. report enough);
   ``sampled n=16``   ``Sampled(16, seed=--seed)``: the same with the most draws under 50
                      bytes per token at 15-bit ids;

4. a smaller student (1 layer of width 64), the same initial weights and the same batches of
   ``Training.batch`` windows for every tier, trained ``--steps`` steps on
   ``alpha * KD + (1 - alpha) * CE`` (``--alpha``, the same for every tier; CE: the labels'
   next-token cross-entropy), and as the two references: ``dense`` (the teacher's full logits
   computed in memory, ``dense_kd_loss``, mixed the same way) and ``labels only`` (CE alone,
   no teacher).

The table: bytes per token of each knowledge file on disk (its whole size over the tokens it
holds), the student's ``KL(teacher || student)`` and next-token loss (nats per token) on
``--held`` held-out windows, and the retention ``(KL_labels - KL_tier) / (KL_labels -
KL_dense)``. Target: a tier at <= 50 bytes per token keeps >= 95 % of the dense gain
(PASS/FAIL; ``--strict`` exits 1 on FAIL). ``--seed`` changes the students' initial weights,
their batches and the sampled codec's draws (not the cached teacher).

The tokenizer and the teacher are cached under ``--cache`` (default ``build/llm_kd``), keyed
by their settings; ``--quick`` is a small slice (a 2,000-token vocabulary) for a smoke test.

    python benchmarks/llm_kd.py            # the full run
    python benchmarks/llm_kd.py --quick    # the smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pantheon import KnowledgeFile, Sampled, SparseSamples, SparseTopK, Teacher, TopK
from pantheon.hf import save_lm_head
from pantheon.torch import (
    dense_kd_loss,
    hidden_kd_loss,
    load_lm_head,
    sampled_kd_loss,
    to_tensor,
    topk_kd_loss,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import table


@dataclass(frozen=True)
class Settings:
    """What the cached tokenizer, token ids and teacher depend on."""

    vocab: int = 32_000
    text_mb: float = 9.0
    ctx: int = 64
    teacher_width: int = 128
    teacher_layers: int = 2
    teacher_steps: int = 400
    teacher_batch: int = 16
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Training:
    """How every student is trained: the same for every tier (not cached)."""

    steps: int = 80
    batch: int = 16
    lr: float = 3e-3
    alpha: float = 0.5  # the KD loss' weight; the labels' cross-entropy has 1 - alpha
    held: int = 512
    seed: int = 0


TOPK_TAIL = 14  # int8 top-k with tail: 14 + 4 + 2 + 27 bytes at 15-bit indices (V = 32,000)
SAMPLES = 16  # sampled: 30 + 16 bytes at 15-bit ids


# ---- text and tokenizer --------------------------------------------------------------------
def stdlib_texts(limit_bytes: int) -> list[str]:
    """The standard library's ``.py`` files (sorted paths, site-packages left out), up to
    ``limit_bytes`` characters in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    out: list[str] = []
    total = 0
    for path in sorted(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        out.append(text)
        total += len(text)
        if total >= limit_bytes:
            break
    return out


def split_files(texts: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Files to the teacher (70 %), distillation (20 %) and held-out (10 %) texts, by a hash of
    their position (so that each split mixes the library's packages)."""
    parts: tuple[list[str], list[str], list[str]] = ([], [], [])
    for i, text in enumerate(texts):
        h = int(hashlib.sha256(str(i).encode()).hexdigest(), 16) % 10
        parts[0 if h < 7 else 1 if h < 9 else 2].append(text)
    return parts


def tokenizer_for(cfg: Settings, teacher_text: list[str], cache: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = cache / f"tokenizer-{cfg.vocab}-{cfg.text_mb:g}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(teacher_text, trainer=trainer)
    tok.save(str(path))
    return tok


def token_windows(tok: Any, texts: list[str], ctx: int) -> np.ndarray:
    """The texts' token ids, concatenated, cut into windows of ``ctx + 1`` (inputs + targets)."""
    ids = np.concatenate([np.asarray(e.ids, np.int32) for e in tok.encode_batch(texts)])
    rows = len(ids) // (ctx + 1)
    return ids[: rows * (ctx + 1)].reshape(rows, ctx + 1)


# ---- models --------------------------------------------------------------------------------
class TinyLM(nn.Module):
    """A pre-norm causal transformer LM: token + position embeddings, layers, final norm,
    ``lm_head`` (untied)."""

    causal: torch.Tensor

    def __init__(self, vocab: int, width: int, layers: int, ctx: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(ctx, width)
        layer = nn.TransformerEncoderLayer(
            width, max(1, width // 32), 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        mask = torch.triu(torch.full((ctx, ctx), float("-inf")), diagonal=1)
        self.register_buffer("causal", mask, persistent=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(n, device=x.device))
        h = self.layers(h, mask=self.causal[:n, :n], is_causal=True)
        out: torch.Tensor = self.norm(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lm_head(self.hidden(x))
        return out


def batches(windows: np.ndarray, size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """``steps`` batches of window indices, reshuffled every epoch."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(windows))
    pos = 0
    for _ in range(steps):
        if pos + size > len(order):
            order, pos = rng.permutation(len(windows)), 0
        yield order[pos : pos + size]
        pos += size


def train(
    model: nn.Module,
    steps: int,
    step_loss: Callable[[np.ndarray], torch.Tensor],
    picks: Iterator[np.ndarray],
    lr: float,
) -> None:
    """AdamW with a linear warm-up (5 %) and a cosine decay."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)),
    )
    model.train()
    for pick in picks:
        loss = step_loss(pick)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()


def teacher_for(cfg: Settings, windows: np.ndarray, cache: Path) -> TinyLM:
    torch.manual_seed(cfg.seed)
    model = TinyLM(cfg.vocab, cfg.teacher_width, cfg.teacher_layers, cfg.ctx)
    path = cache / f"teacher-{cfg.key()}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))  # tensors only, no pickle
        return model.eval()
    data = torch.from_numpy(windows.astype(np.int64))

    def step(pick: np.ndarray) -> torch.Tensor:
        x = data[pick]
        logits = model(x[:, :-1])
        return nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

    picks = batches(windows, cfg.teacher_batch, cfg.teacher_steps, cfg.seed)
    train(model, cfg.teacher_steps, step, picks, lr=3e-3)
    torch.save(model.state_dict(), path)
    return model.eval()


# ---- knowledge files -----------------------------------------------------------------------
def tiers(seed: int) -> dict[str, dict[str, Any]]:
    """The knowledge tiers: key dumped and its codec (``seed``: the sampled codec's draws)."""
    return {
        "hidden fp16": {"key": "hidden", "codec": "float16"},
        "fp16 top-16": {"key": "logits", "codec": TopK(16, log_softmax=True)},
        f"int8 top-{TOPK_TAIL}+tail": {
            "key": "logits",
            "codec": TopK(TOPK_TAIL, values_dtype="uint8", tail=True, log_softmax=True),
        },
        "sampled n=12": {"key": "logits", "codec": Sampled(12, seed=seed)},
        f"sampled n={SAMPLES}": {"key": "logits", "codec": Sampled(SAMPLES, seed=seed)},
    }


def dump_knowledge(
    teacher: TinyLM, windows: np.ndarray, folder: Path, spec: dict[str, dict[str, Any]]
) -> dict[str, Path]:
    """One knowledge file per tier over the distillation windows, in batches of 16 sequences."""
    paths = {name: folder / f"{i}.arrow" for i, name in enumerate(spec)}
    teachers = {
        name: Teacher(out_path=str(paths[name]), codecs={s["key"]: s["codec"]})
        for name, s in spec.items()
    }
    data = torch.from_numpy(windows[:, :-1].astype(np.int64))
    try:
        for start in range(0, len(data), 16):
            with torch.no_grad():
                hidden = teacher.hidden(data[start : start + 16])
                logits = teacher.lm_head(hidden).numpy()
            for name, t in teachers.items():
                if spec[name]["key"] == "hidden":
                    t.dump({"hidden": hidden.numpy()})
                else:
                    t.dump({"logits": logits})
    finally:
        for t in teachers.values():
            t.close()
    return paths


tensor: Callable[[Any], torch.Tensor] = to_tensor  # knowledge arrays, without a copy

Loss = Callable[[torch.Tensor, np.ndarray, torch.Tensor], torch.Tensor]


def kd_loss(key: str, kf: KnowledgeFile | None, head: Any, teacher: TinyLM) -> Loss:
    """A tier's KD loss: (student logits [b, L, V], window ids, tokens) -> loss; ``kf`` None:
    the dense reference (the teacher's logits computed in memory)."""
    if kf is None:

        def dense(s: torch.Tensor, _ids: np.ndarray, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t = teacher(x[:, :-1])
            return dense_kd_loss(s, t)

        return dense

    def from_file(s: torch.Tensor, ids: np.ndarray, _x: torch.Tensor) -> torch.Tensor:
        k: Any = kf.take(ids)[key]
        if isinstance(k, SparseSamples):
            return sampled_kd_loss(s, tensor(k.ids), tensor(k.counts))
        if isinstance(k, SparseTopK):
            tail = None if k.tail is None else tensor(k.tail)
            return topk_kd_loss(s, tensor(k.values), tensor(k.indices), tail)
        return hidden_kd_loss(s, to_tensor(k).float(), head.weight)

    return from_file


def mixed(kd: Loss | None, alpha: float) -> Loss:
    """``alpha * KD + (1 - alpha) * CE`` (``kd`` None: the labels' cross-entropy alone)."""

    def loss(s: torch.Tensor, ids: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy(s.flatten(0, 1), x[:, 1:].flatten())
        if kd is None:
            return ce
        return kd(s, ids, x) if alpha == 1 else alpha * kd(s, ids, x) + (1 - alpha) * ce

    return loss


@torch.no_grad()
def evaluate(student: TinyLM, teacher: TinyLM, windows: np.ndarray) -> tuple[float, float]:
    """Held-out (KL(teacher || student), next-token loss), nats per token."""
    kl = ce = 0.0
    data = torch.from_numpy(windows.astype(np.int64))
    for start in range(0, len(data), 32):
        x = data[start : start + 32]
        s = student(x[:, :-1])
        t = teacher(x[:, :-1])
        kl += float(dense_kd_loss(s, t, reduction="sum"))
        ce += float(
            nn.functional.cross_entropy(s.flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        )
    tokens = data[:, 1:].numel()
    return kl / tokens, ce / tokens


# ---- the run -------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small slice (smoke test)")
    ap.add_argument("--cache", default="build/llm_kd", help="tokenizer/teacher cache folder")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--teacher-steps", type=int, default=None)
    d = Training()
    ap.add_argument("--steps", type=int, default=None, help=f"student steps ({d.steps})")
    ap.add_argument("--batch", type=int, default=d.batch, help=f"windows per step ({d.batch})")
    ap.add_argument("--alpha", type=float, default=d.alpha, help=f"KD weight, rest CE ({d.alpha})")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"peak lr ({d.lr:g})")
    ap.add_argument("--held", type=int, default=d.held, help=f"held-out windows ({d.held})")
    ap.add_argument("--seed", type=int, default=d.seed, help="init, batches, draws (0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless the target is met")
    ap.add_argument("--prepare", action="store_true", help="only build the cached teacher")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Settings(vocab=2000, text_mb=1.0, teacher_steps=60) if args.quick else Settings()
    if args.vocab or args.teacher_steps:
        cfg = replace(
            cfg,
            vocab=args.vocab or cfg.vocab,
            teacher_steps=args.teacher_steps or cfg.teacher_steps,
        )
    steps = args.steps or (30 if args.quick else Training.steps)
    how = Training(steps, args.batch, args.lr, args.alpha, args.held, args.seed)
    out = run(cfg, how, Path(args.cache), prepare=args.prepare)
    return 0 if out["pass"] or not args.strict else 1


def data_for(cfg: Settings, how: Training, cache: Path) -> tuple[np.ndarray, ...]:
    """The token windows: (teacher's, distillation's, held-out's)."""
    teacher_text, distill_text, held_text = split_files(stdlib_texts(int(cfg.text_mb * 2**20)))
    tok = tokenizer_for(cfg, teacher_text, cache)
    if tok.get_vocab_size() != cfg.vocab:
        raise SystemExit(
            f"the tokenizer learned {tok.get_vocab_size()} tokens from {cfg.text_mb:g} MB of "
            f"text, not {cfg.vocab}: give more text (Settings.text_mb) or a smaller --vocab"
        )
    teach_w, distill_w, held_w = (
        token_windows(tok, t, cfg.ctx) for t in (teacher_text, distill_text, held_text)
    )
    return teach_w, distill_w[: how.steps * how.batch], held_w[: how.held]


def one_student(cfg: Settings, how: Training, loss_of: Loss, init: Any, used: np.ndarray) -> TinyLM:
    """A student from the weights ``init``, trained on ``loss_of`` over the batches of ``used``
    (the same for every tier)."""
    student = TinyLM(cfg.vocab, 64, 1, cfg.ctx)
    student.load_state_dict(init)
    data = torch.from_numpy(used.astype(np.int64))

    def step(pick: np.ndarray) -> torch.Tensor:
        x = data[pick]
        return loss_of(student(x[:, :-1]), pick, x)

    train(student, how.steps, step, batches(used, how.batch, how.steps, how.seed + 2), how.lr)
    return student


def students(
    cfg: Settings, how: Training, teacher: TinyLM, used: np.ndarray, held_w: np.ndarray, cache: Path
) -> list[dict[str, Any]]:
    """Dump every tier's knowledge, train one student per tier, evaluate each on ``held_w``."""
    t0 = time.perf_counter()
    spec = tiers(how.seed)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        folder = Path(tmp)
        paths = dump_knowledge(teacher, used, folder, spec)
        save_lm_head(teacher, folder / "lm_head.npz")
        head = load_lm_head(folder / "lm_head.npz")
        print(f"knowledge dumped ({time.perf_counter() - t0:.0f} s)", flush=True)
        torch.manual_seed(how.seed + 1)
        init = TinyLM(cfg.vocab, 64, 1, cfg.ctx).state_dict()
        for name in ["labels only", "dense", *spec]:
            kf = KnowledgeFile(paths[name], sparse_topk=True) if name in paths else None
            key = spec[name]["key"] if name in spec else ""
            kd = None if name == "labels only" else kd_loss(key, kf, head, teacher)
            try:
                student = one_student(cfg, how, mixed(kd, how.alpha), init, used)
            finally:
                if kf is not None:
                    kf.close()
            kl, ce = evaluate(student, teacher, held_w)
            size = os.path.getsize(paths[name]) / used[:, 1:].size if name in paths else None
            results.append({"tier": name, "bytes_per_token": size, "kl": kl, "loss": ce})
            print(f"  {name}: KL {kl:.4f}, loss {ce:.4f} ({time.perf_counter() - t0:.0f} s)")
        results.append({"head_bytes": os.path.getsize(folder / "lm_head.npz")})
    return results


def report(results: list[dict[str, Any]], cfg: Settings, how: Training, t_ce: float) -> bool:
    """Fill in the retentions, print the table; whether the target is met."""
    by = {r["tier"]: r for r in results}
    gain = by["labels only"]["kl"] - by["dense"]["kl"]
    for r in results:
        r["retention"] = (by["labels only"]["kl"] - r["kl"]) / gain if gain > 0 else float("nan")
    ok = any(
        r["bytes_per_token"] is not None and r["bytes_per_token"] <= 50 and r["retention"] >= 0.95
        for r in results
    )
    rows = [
        [
            r["tier"],
            "-" if r["bytes_per_token"] is None else f"{r['bytes_per_token']:.1f}",
            f"{r['kl']:.4f}",
            f"{r['loss']:.4f}",
            f"{100 * r['retention']:.1f} %",
        ]
        for r in results
    ]
    print()
    print(table(["tier", "B/token", "held-out KL", "next-token loss", "retention"], rows))
    print(
        f"\nteacher: held-out next-token loss {t_ce:.4f}; vocabulary {cfg.vocab}; students: "
        f"{how.steps} steps of {how.batch} x {cfg.ctx} tokens, lr {how.lr:g}, loss "
        f"{how.alpha:g} KD + {1 - how.alpha:g} CE (labels only: CE), seed {how.seed}"
    )
    return ok


def run(cfg: Settings, how: Training, cache: Path, *, prepare: bool = False) -> dict[str, Any]:
    """The whole benchmark; prints its table and returns ``{"rows": [...], "pass": bool,
    "teacher_loss": float}``."""
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    teach_w, used, held_w = data_for(cfg, how, cache)
    print(
        f"vocab {cfg.vocab}, windows of {cfg.ctx} tokens: teacher {len(teach_w)}, distillation "
        f"{len(used)}, held-out {len(held_w)} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    teacher = teacher_for(cfg, teach_w, cache)
    print(f"teacher ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    if prepare:
        return {"rows": [], "pass": True}
    results = students(cfg, how, teacher, used, held_w, cache)
    head_bytes = results.pop()["head_bytes"]
    _, t_ce = evaluate(teacher, teacher, held_w)
    ok = report(results, cfg, how, t_ce)
    print(
        f"lm_head side file {head_bytes / 1e6:.1f} MB (once); dense float16 logits would take "
        f"{2 * cfg.vocab} B/token\ntarget: a tier at <= 50 B/token keeps >= 95 % of the dense "
        f"gain: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.0f} s in all)"
    )
    return {"rows": results, "pass": ok, "teacher_loss": t_ce}


if __name__ == "__main__":
    raise SystemExit(main())
