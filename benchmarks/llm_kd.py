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
   ``int8 top-16+tail`` ``TopK(16, values_dtype="uint8", tail=True, log_softmax=True)``:
                      ``topk_kd_loss`` with the tail bucket;
   ``sampled n=12``   ``Sampled(12)``: ``sampled_kd_loss``;

4. a smaller student (1 layer of width 64), the same initial weights and the same batches of
   8 windows for every tier, trained ``--steps`` steps (default 60) on the KD loss alone, and
   as the two references: ``dense`` (the teacher's full logits computed in memory, ``dense_kd_loss``)
   and ``labels only`` (next-token cross-entropy, no teacher).

The table: bytes per token of each knowledge file on disk (its whole size over the tokens it
holds), the student's ``KL(teacher || student)`` and next-token loss (nats per token) on 128
held-out windows, and the retention ``(KL_labels - KL_tier) / (KL_labels - KL_dense)``. Target: a tier at
<= 50 bytes per token keeps >= 95 % of the dense gain (PASS/FAIL; ``--strict`` exits 1 on FAIL).

The tokenizer and the teacher are cached under ``--cache`` (default
``build/llm_kd``), keyed by their settings; ``--quick`` is a small slice (a 2,000-token
vocabulary, few steps) for a smoke test.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pantheon import KnowledgeFile, Sampled, Teacher, TopK
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
        loss.backward()
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
TIERS: dict[str, dict[str, Any]] = {
    "hidden fp16": {"key": "hidden", "codec": "float16"},
    "fp16 top-16": {"key": "logits", "codec": TopK(16, log_softmax=True)},
    "int8 top-16+tail": {
        "key": "logits",
        "codec": TopK(16, values_dtype="uint8", tail=True, log_softmax=True),
    },
    "sampled n=12": {"key": "logits", "codec": Sampled(12)},
}


def dump_knowledge(teacher: TinyLM, windows: np.ndarray, folder: Path) -> dict[str, Path]:
    """One knowledge file per tier over the distillation windows, in batches of 16 sequences."""
    paths = {name: folder / f"{i}.arrow" for i, name in enumerate(TIERS)}
    teachers = {
        name: Teacher(out_path=str(paths[name]), codecs={spec["key"]: spec["codec"]})
        for name, spec in TIERS.items()
    }
    data = torch.from_numpy(windows[:, :-1].astype(np.int64))
    try:
        for start in range(0, len(data), 16):
            with torch.no_grad():
                hidden = teacher.hidden(data[start : start + 16])
                logits = teacher.lm_head(hidden).numpy()
            for name, t in teachers.items():
                if TIERS[name]["key"] == "hidden":
                    t.dump({"hidden": hidden.numpy()})
                else:
                    t.dump({"logits": logits})
    finally:
        for t in teachers.values():
            t.close()
    return paths


def tier_loss(
    name: str, kf: KnowledgeFile | None, head: Any, teacher: TinyLM
) -> Callable[[torch.Tensor, np.ndarray, torch.Tensor], torch.Tensor]:
    """The KD loss of a tier: (student logits [b, L, V], window ids, tokens) -> loss."""
    if name == "labels only":
        return lambda s, _ids, x: nn.functional.cross_entropy(s.flatten(0, 1), x[:, 1:].flatten())
    if name == "dense":

        def dense(s: torch.Tensor, _ids: np.ndarray, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t = teacher(x[:, :-1])
            return dense_kd_loss(s, t)

        return dense
    assert kf is not None

    def from_file(s: torch.Tensor, ids: np.ndarray, _x: torch.Tensor) -> torch.Tensor:
        k = kf.take(ids)[TIERS[name]["key"]]
        if name == "hidden fp16":
            return hidden_kd_loss(s, to_tensor(k).float(), head.weight)
        if name == "sampled n=12":
            return sampled_kd_loss(s, to_tensor(k.ids), to_tensor(k.counts))
        tail = None if k.tail is None else to_tensor(k.tail)
        return topk_kd_loss(s, to_tensor(k.values), to_tensor(k.indices), tail)

    return from_file


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small slice (smoke test)")
    ap.add_argument("--cache", default="build/llm_kd", help="tokenizer/teacher cache folder")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="student steps per tier")
    ap.add_argument("--teacher-steps", type=int, default=None)
    ap.add_argument("--held", type=int, default=None, help="held-out windows (default 128)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless the target is met")
    ap.add_argument(
        "--prepare", action="store_true", help="only build the cached tokenizer/teacher"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = (
        Settings(vocab=2000, text_mb=1.0, teacher_steps=60, teacher_batch=16)
        if args.quick
        else Settings()
    )
    if args.vocab or args.teacher_steps:
        cfg = Settings(
            **{
                **asdict(cfg),
                **({"vocab": args.vocab} if args.vocab else {}),
                **({"teacher_steps": args.teacher_steps} if args.teacher_steps else {}),
            }
        )
    steps = args.steps or (30 if args.quick else 60)
    rows_out = run(cfg, steps, Path(args.cache), prepare=args.prepare, held=args.held)
    return 0 if rows_out["pass"] or not args.strict else 1


def run(
    cfg: Settings, steps: int, cache: Path, *, prepare: bool = False, held: int | None = None
) -> dict[str, Any]:
    """The whole benchmark; prints its table and returns ``{"rows": [...], "pass": bool}``
    (``held``: held-out windows, default 128)."""
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    teacher_text, distill_text, held_text = split_files(stdlib_texts(int(cfg.text_mb * 2**20)))
    tok = tokenizer_for(cfg, teacher_text, cache)
    if tok.get_vocab_size() != cfg.vocab:
        raise SystemExit(
            f"the tokenizer learned {tok.get_vocab_size()} tokens from {cfg.text_mb:g} MB of "
            f"text, not {cfg.vocab}: give more text (Settings.text_mb) or a smaller --vocab"
        )
    windows = [token_windows(tok, t, cfg.ctx) for t in (teacher_text, distill_text, held_text)]
    teach_w, distill_w, held_w = windows
    held_w = held_w[: held or 128]
    print(
        f"vocab {tok.get_vocab_size()}, windows of {cfg.ctx} tokens: teacher {len(teach_w)}, "
        f"distillation {len(distill_w)}, held-out {len(held_w)} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    teacher = teacher_for(cfg, teach_w, cache)
    print(f"teacher ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    if prepare:
        return {"rows": [], "pass": True}
    student_batch = 8
    used = distill_w[: min(len(distill_w), steps * student_batch)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        folder = Path(tmp)
        paths = dump_knowledge(teacher, used, folder)
        save_lm_head(teacher, folder / "lm_head.npz")
        head = load_lm_head(folder / "lm_head.npz")
        tokens = used[:, 1:].size
        print(f"knowledge dumped ({time.perf_counter() - t0:.0f} s)", flush=True)
        torch.manual_seed(cfg.seed + 1)
        init = TinyLM(cfg.vocab, 64, 1, cfg.ctx).state_dict()
        data = torch.from_numpy(used.astype(np.int64))
        for name in ["labels only", "dense", *TIERS]:
            kf = KnowledgeFile(paths[name], sparse_topk=True) if name in paths else None
            try:
                loss_of = tier_loss(name, kf, head, teacher)
                student = TinyLM(cfg.vocab, 64, 1, cfg.ctx)
                student.load_state_dict(init)

                def step(pick: np.ndarray, f: Any = loss_of, m: TinyLM = student) -> torch.Tensor:
                    x = data[pick]
                    return f(m(x[:, :-1]), pick, x)

                train(student, steps, step, batches(used, student_batch, steps, cfg.seed + 2), 3e-3)
            finally:
                if kf is not None:
                    kf.close()
            kl, ce = evaluate(student, teacher, held_w)
            nbytes = os.path.getsize(paths[name]) / tokens if name in paths else None
            results.append({"tier": name, "bytes_per_token": nbytes, "kl": kl, "loss": ce})
            print(
                f"  {name}: KL {kl:.4f}, loss {ce:.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        head_bytes = os.path.getsize(folder / "lm_head.npz")
    _, t_ce = evaluate(teacher, teacher, held_w)
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
        f"\nteacher: next-token loss {t_ce:.4f}; vocabulary {cfg.vocab}; student {steps} steps "
        f"of {student_batch} x {cfg.ctx} tokens; lm_head side file {head_bytes / 1e6:.1f} MB "
        f"(once); dense float16 logits would take {2 * cfg.vocab} B/token"
    )
    print(
        f"target: a tier at <= 50 B/token keeps >= 95 % of the dense gain: "
        f"{'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.0f} s in all)"
    )
    return {"rows": results, "pass": ok, "teacher_loss": t_ce}


if __name__ == "__main__":
    raise SystemExit(main())
