"""Benchmark of the knowledge service's prediction side.

(1) Throughput of a compute-bound torch teacher (an MLP) served through ``make_round_factory``
    and consumed fully, each chunk encoded to float16, against the same model in a bare loop
    over the same reader (also encoding to float16). Paths are interleaved after a warm-up;
    medians are reported with the ratio service / bare (target >= 0.9).
(2) Bytes per token of top-20 knowledge of a 32k vocabulary vs dense float16 logits.

Run: ``python benchmarks/service.py`` (about half a minute on 2 CPU cores), or
``python benchmarks/service.py --device cuda:0 --hidden 8192 --batch-size 1024`` on a GPU.

Paths live in ``PATHS``: each takes a :class:`Setup` and runs one full round, returning the
number of samples it produced. A path through ``Teacher.start_knowledge_service`` (to a file
or a socket) can be added there and listed in ``--paths``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _util import sync

from pantheon._codecs import Cast, TopK
from pantheon._service import ServiceSpec, make_round_factory
from pantheon.torch import TorchProgram


@dataclass
class Setup:
    """What every path shares: the teacher, its reader, where it runs."""

    model: torch.nn.Module
    batches: list[np.ndarray]
    device: str
    workers: int
    buf_size: int
    threads: int

    def reader(self) -> Iterator[tuple[np.ndarray]]:
        for x in self.batches:
            yield (x,)

    @property
    def exe(self) -> Any:
        return [self.device] * self.workers if self.workers > 1 else self.device


def make_setup(args: argparse.Namespace) -> Setup:
    torch.manual_seed(0)
    h = args.hidden
    model = torch.nn.Sequential(
        torch.nn.Linear(args.features, h),
        torch.nn.GELU(),
        torch.nn.Linear(h, h),
        torch.nn.GELU(),
        torch.nn.Linear(h, args.classes),
    ).to(args.device)
    rng = np.random.default_rng(0)
    batches = [
        rng.standard_normal((args.batch_size, args.features)).astype(np.float32)
        for _ in range(args.batches)
    ]
    return Setup(model.eval(), batches, args.device, args.workers, args.buf_size, args.threads)


_FP16 = Cast("float16")


def run_bare(setup: Setup) -> int:
    """The model in a plain loop over the reader: predict, copy to host, encode to float16."""
    n = 0
    dev = torch.device(setup.device)
    torch.set_num_threads(setup.threads)
    with torch.inference_mode():
        for (x,) in setup.reader():
            out = setup.model(torch.from_numpy(x).to(dev)).cpu().numpy()
            _FP16.encode(out)
            n += len(out)
    return n


def run_bare_thread(setup: Setup) -> int:
    """The bare loop run in a fresh thread: torch may run faster off the main thread (its
    intra-op thread pools are per calling thread), so this separates that effect from the
    service's own cost."""
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(run_bare(setup)))
    t.start()
    t.join()
    return out[0]


_FACTORIES: dict[int, Callable[[int], Any]] = {}


def run_service(setup: Setup) -> int:
    """The same through make_round_factory (worker threads, ordered delivery), consumed fully;
    the consumer encodes each chunk to float16 while the workers predict the next batches."""
    key = id(setup)
    if key not in _FACTORIES:  # programs are placed once per service, as a teacher does
        # the same intra-op threads as the bare loop (set in each worker thread)
        program = TorchProgram(setup.model, ["x"], num_threads=setup.threads)
        _FACTORIES[key] = make_round_factory(
            ServiceSpec(
                ("x",),
                {"logits": "output"},
                program,
                {"batch_generator": setup.reader},
                exe=setup.exe,
                buf_size=setup.buf_size,
            )
        )
    n = 0
    for chunk in _FACTORIES[key](0, 0):
        _FP16.encode(chunk.data["logits"])
        n += len(chunk.ids)
    return n


def run_teacher(setup: Setup) -> int:
    """The public API end to end: ``Teacher(out_path=..., use_fp16=True)`` and
    ``start_knowledge_service`` writing a knowledge file (float16 on disk)."""
    import tempfile

    from pantheon import Teacher

    program = TorchProgram(setup.model, ["x"], num_threads=setup.threads)
    with (
        tempfile.TemporaryDirectory() as tmp,
        Teacher(out_path=f"{tmp}/k.arrow", use_fp16=True) as teacher,
    ):
        teacher.start_knowledge_service(
            feed_list=["x"],
            schema={"logits": "output"},
            program=program,
            reader_config={"batch_generator": setup.reader},
            exe=setup.exe,
            buf_size=setup.buf_size,
            progress=False,
        )
        return int(teacher.stats()["samples"])


PATHS: dict[str, Callable[[Setup], int]] = {
    "bare": run_bare,
    "bare_thread": run_bare_thread,
    "service": run_service,
    "teacher": run_teacher,
}


def bench_throughput(args: argparse.Namespace) -> dict[str, float]:
    setup = make_setup(args)
    paths = args.paths.split(",")
    times: dict[str, list[float]] = {p: [] for p in paths}
    for p in paths:  # warm-up
        PATHS[p](setup)
    for _ in range(args.repeats):  # interleaved
        for p in paths:
            sync(args.device)
            t0 = time.perf_counter()
            n = PATHS[p](setup)
            sync(args.device)
            times[p].append(time.perf_counter() - t0)
            assert n == args.batches * args.batch_size, (p, n)
    samples = args.batches * args.batch_size
    rates = {p: samples / statistics.median(ts) for p, ts in times.items()}
    per_batch_ms = 1000 * statistics.median(times[paths[0]]) / args.batches
    print(
        f"(1) teacher MLP {args.features}-{args.hidden}-{args.hidden}-{args.classes}, "
        f"batch {args.batch_size}, {args.batches} batches, device {args.device}, "
        f"workers {args.workers}, buf_size {args.buf_size}, {args.threads} intra-op threads; "
        f"{paths[0]}: {per_batch_ms:.1f} ms "
        "per batch"
    )
    for p, r in rates.items():
        spread = ", ".join(f"{samples / t:,.0f}" for t in times[p])
        print(f"    {p:>8}: median {r:,.0f} samples/s  (runs: {spread})")
    if "bare" in rates:
        for p, r in rates.items():
            if p != "bare":
                print(f"    ratio {p} / bare = {r / rates['bare']:.3f}  (target >= 0.9)")
    return rates


def bench_topk(args: argparse.Namespace) -> float:
    tokens, vocab, k = args.topk_tokens, 32_000, 20
    x = np.random.default_rng(0).standard_normal((tokens, vocab)).astype(np.float32)
    codec = TopK(k)
    enc_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        parts = codec.encode(x)
        enc_times.append(time.perf_counter() - t0)
    per_token = sum(np.asarray(v).nbytes for v in parts.values()) / tokens
    dense = vocab * 2
    print(
        f"(2) top-{k} of a {vocab} vocabulary: {per_token:.0f} bytes/token (float16 values + "
        f"2-byte indices) vs dense float16 {dense} bytes/token = {per_token / dense:.3%} "
        f"(target <= 100 bytes/token); encode {tokens / statistics.median(enc_times):,.0f} "
        "tokens/s"
    )
    return per_token


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="'cpu' (default) or e.g. 'cuda:0'")
    ap.add_argument("--workers", type=int, default=1, help="service workers on --device")
    ap.add_argument("--buf-size", type=int, default=10)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in both paths (default 1: on a small shared machine "
        "more threads made both paths slower and noisier)",
    )
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paths", default="bare,service", help=f"comma list of {sorted(PATHS)}")
    ap.add_argument("--topk-tokens", type=int, default=2048)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}")
    bench_throughput(args)
    bench_topk(args)


if __name__ == "__main__":
    main()
