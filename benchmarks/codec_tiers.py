"""LLM knowledge codec tiers: bytes per token on disk for a 152k vocabulary, and the bit packer.

Part 1 writes the same knowledge (``--batches`` batches of ``--seqs`` sequences of
``--tokens`` tokens, float16 logits over ``--vocab`` = 151,936 entries, plus the token ids) to
one knowledge file per tier in a temporary directory and reads each back with
``pantheon inspect``'s report (:func:`pantheon._cli.main.inspect_report`):

``dense fp16``        the logits cast to float16 (``"float16"``), ids as int64;
``hf layout 1``       what the HF program stored before: top-16 float16 log-probs, int32
                      indices, int64 ids (the earlier top-k layout: ``TopK(16, layout=1)``);
``topk16 fp16``       ``TopK(16, log_softmax=True)``: float16 values, 18-bit packed indices;
``topk16 q8+tail``    ``TopK(16, values_dtype="uint8", log_softmax=True, tail=True)``;
``topk32 q8+tail``    the same with k = 32;
``sampled n=12``      ``Sampled(12)``: 12 draws per token, ids at 18 bits, uint8 counts;

the packed tiers store the ids as int32 (``"int32"``). The table shows, per tier, the file's
bytes per token (everything on disk: sample ids, offsets, metadata), the knowledge key's own
stored bytes per token, and the top-k mass (synthetic logits: a Zipf-like ranking with noise,
so the mass is only indicative).

Part 2 times the vectorised bit packer (:func:`pantheon._codecs.pack_bits`) on ``2**20``
indices (top-16 rows) at 17 and 18 bits against two baselines run side by side: a plain
``astype(int32)`` copy (what storing int32 indices costs) and a reference packer built on
``numpy.packbits`` (one byte per bit). Medians of ``--repeats`` runs (default 5), and ratios.

Part 3 times each tier's encode on ``--encode-tokens`` tokens (default 128, float16 logits):
tokens per second and the ratio to ``TopK(16, log_softmax=True)``.

    python benchmarks/codec_tiers.py            # ~1 minute on 2 cores
    python benchmarks/codec_tiers.py --batches 1 --tokens 64   # a smoke run
    python benchmarks/codec_tiers.py --keep tiers/ && pantheon inspect tiers/sampled_n=12.arrow
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import median, table

from pantheon import KnowledgeWriter, Ragged, Sampled, TopK
from pantheon._cli.main import inspect_report
from pantheon._codecs import pack_bits, unpack_bits


def _logits(rng: np.random.Generator, tokens: int, vocab: int) -> np.ndarray:
    """Zipf-like logits: a random ranking per token, log-weights -1.1 * log(rank), noise."""
    rank = np.log(np.arange(1, vocab + 1, dtype=np.float32))
    out = np.empty((tokens, vocab), dtype=np.float16)
    for t in range(tokens):
        noisy = -1.1 * rank + rng.standard_normal(vocab).astype(np.float32) * 0.5
        out[t] = noisy[rng.permutation(vocab)]
    return out


def _tiers() -> dict[str, dict[str, Any]]:
    return {
        "dense fp16": {"logits": "float16"},
        "hf layout 1": {"logits": TopK(16, log_softmax=True, layout=1)},
        "topk16 fp16": {"logits": TopK(16, log_softmax=True), "input_ids": "int32"},
        "topk16 q8+tail": {
            "logits": TopK(16, values_dtype="uint8", log_softmax=True, tail=True),
            "input_ids": "int32",
        },
        "topk32 q8+tail": {
            "logits": TopK(32, values_dtype="uint8", log_softmax=True, tail=True),
            "input_ids": "int32",
        },
        "sampled n=12": {"logits": Sampled(12, seed=0), "input_ids": "int32"},
    }


def tiers_table(args: argparse.Namespace, workdir: Path) -> tuple[str, dict[str, Any]]:
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.batches):
        lengths = [args.tokens] * args.seqs
        logits = _logits(rng, sum(lengths), args.vocab)
        ids = rng.integers(0, args.vocab, size=sum(lengths))
        batches.append({"input_ids": Ragged(ids, lengths), "logits": Ragged(logits, lengths)})
    rows, reports = [], {}
    for name, codecs in _tiers().items():
        path = workdir / f"{name.replace(' ', '_')}.arrow"
        with KnowledgeWriter(path, codecs=codecs) as w:
            for batch in batches:
                w.write(batch)
        report = inspect_report(path)
        reports[name] = report
        key = report["keys"]["logits"]
        mass = key.get("topk_mass")
        rows.append(
            [
                name,
                f"{report['bytes_per_token']:.1f}",
                f"{key['bytes_per_token']:.1f}",
                f"{report['keys']['input_ids']['bytes_per_token']:.1f}",
                "-" if mass is None else f"{mass:.3f}",
            ]
        )
        if not args.keep:
            path.unlink()
    header = ["tier", "file B/token", "knowledge B/token", "ids B/token", "top-k mass"]
    return table(header, rows), reports


def _time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return median(out)


def _reference_pack(values: np.ndarray, bits: int) -> np.ndarray:
    shifts = np.arange(bits, dtype=np.int64)
    stream = ((values[..., None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(stream.reshape(values.shape[0], -1), axis=-1, bitorder="little")


def packer_table(repeats: int) -> str:
    rng = np.random.default_rng(1)
    rows = []
    for bits in (17, 18):
        idx = rng.integers(0, 1 << bits, size=(1 << 16, 16), dtype=np.int64)  # 2**20 indices
        packed = pack_bits(idx, bits)
        assert np.array_equal(packed, _reference_pack(idx, bits))
        t_pack = _time(lambda: pack_bits(idx, bits), repeats)  # noqa: B023
        t_unpack = _time(lambda: unpack_bits(packed, bits, 16), repeats)  # noqa: B023
        t_copy = _time(lambda: idx.astype(np.int32), repeats)  # noqa: B023
        t_ref = _time(lambda: _reference_pack(idx, bits), repeats)  # noqa: B023
        rows.append(
            [
                f"{bits} bits",
                f"{t_pack * 1e3:.1f}",
                f"{t_unpack * 1e3:.1f}",
                f"{t_copy * 1e3:.1f}",
                f"{t_ref * 1e3:.1f}",
                f"{t_pack / t_copy:.1f}x",
                f"{t_ref / t_pack:.1f}x",
            ]
        )
    header = ["1M indices", "pack ms", "unpack ms", "int32 copy ms", "packbits ref ms",
              "pack / copy", "ref / pack"]  # fmt: skip
    return table(header, rows)


def encode_table(args: argparse.Namespace) -> str:
    """Tokens per second of each tier's encode on ``--encode-tokens`` tokens (float16 logits),
    and the ratio to ``TopK(16, log_softmax=True)``, run side by side."""
    logits = _logits(np.random.default_rng(2), args.encode_tokens, args.vocab)
    ids = np.arange(len(logits), dtype=np.int64)
    codecs = {name: c["logits"] for name, c in _tiers().items() if name != "dense fp16"}
    seconds = {}
    for name, codec in codecs.items():
        encode = getattr(codec, "encode_ids", None)
        if encode is not None:
            seconds[name] = _time(lambda e=encode: e(logits, ids), args.repeats)
        else:
            seconds[name] = _time(lambda c=codec: c.encode(logits), args.repeats)
    base = seconds["topk16 fp16"]
    rows = [[name, f"{len(logits) / t:.0f}", f"{base / t:.2f}x"] for name, t in seconds.items()]
    return table(["encode", "tokens/s", "vs topk16 fp16"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seqs", type=int, default=4, help="sequences per batch")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encode-tokens", type=int, default=128, help="tokens timed per encode")
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the tier files here and keep them"
    )
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        text, reports = tiers_table(args, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text, reports = tiers_table(args, Path(tmp))
    tokens = args.batches * args.seqs * args.tokens
    print(f"Codec tiers: {tokens:,} tokens, vocabulary {args.vocab:,} (bytes per token)")
    print(text)
    print()
    print(packer_table(args.repeats))
    print()
    print(encode_table(args))
    return reports


if __name__ == "__main__":
    main()
