"""What a knowledge file holds, as ``pantheon inspect`` shows it (and ``pantheon dump`` sums up).

:func:`inspect_report` reads a knowledge file into a JSON-able dict; :func:`format_report` is
its table; :func:`size_line` is the one sentence on its size (bytes on disk, per sample, per
token) that both ``inspect`` and ``dump`` print, so their figures always agree.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .._knowledge import BFLOAT16, Ragged

__all__ = ["format_report", "inspect_report", "size_line"]


def _finite(x: float) -> float | str:
    """A float for JSON: inf and nan become the strings "inf", "-inf", "nan"."""
    return x if math.isfinite(x) else str(x)


class _Stats:
    """Running min / max / sum / count over the values of one key (ragged: every token)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.nan = False

    def add(self, value: Any) -> None:
        value = _kept(value)
        arr = value.values if isinstance(value, Ragged) else value
        if arr.size == 0:
            return
        if arr.dtype == BFLOAT16:
            arr = arr.astype(np.float32)
        elif arr.dtype == np.bool_:
            arr = arr.view(np.uint8)
        low, high = float(arr.min()), float(arr.max())
        if math.isnan(low) or math.isnan(high):
            self.nan = True
        else:
            self.low, self.high = min(self.low, low), max(self.high, high)
        self.total += float(arr.sum(dtype=np.float64))
        self.count += int(arr.size)

    def report(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, "min": None, "max": None, "mean": None}
        nan = math.nan if self.nan else None
        return {
            "count": self.count,
            "min": _finite(nan if nan is not None else self.low),
            "max": _finite(nan if nan is not None else self.high),
            "mean": _finite(self.total / self.count),
        }


def _kept(value: Any) -> Any:
    """The kept entries of a sparse top-k value, the counts of sampled knowledge; any other
    value as it is."""
    from .._codecs import SparseSamples, SparseTopK

    if isinstance(value, SparseTopK):
        return value.values
    if isinstance(value, SparseSamples):
        return value.counts
    return value


def _tokens(value: Any) -> int:
    """Tokens (positions along the variable axis) of a ragged field, or of a sparse top-k one."""
    value = _kept(value)
    return int(value.lengths.sum()) if isinstance(value, Ragged) else 0


class _Mass:
    """Running mean over positions of the probability mass a sparse top-k value's entries hold:
    ``sum(exp(values))`` for log-probabilities; with a tail (any values),
    ``sum(exp(v)) / (sum(exp(v)) + exp(tail))``. Other values have none."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, value: Any) -> None:
        from .._codecs import SparseTopK

        if not isinstance(value, SparseTopK):
            return
        v = _kept(value)
        v = (v.values if isinstance(v, Ragged) else v).astype(np.float64)
        if value.tail is not None:
            t = value.tail.values if isinstance(value.tail, Ragged) else value.tail
            top = np.max(v, axis=-1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0)
            kept = np.exp(v - top).sum(axis=-1)
            with np.errstate(invalid="ignore"):  # 0 / 0: nothing finite at all
                mass = kept / (kept + np.exp(t.astype(np.float64)[..., 0] - top[..., 0]))
            mass = mass[np.isfinite(mass)]
        elif value.holds == "logprobs":
            mass = np.exp(v).sum(axis=-1)
        else:
            return
        self.total += float(mass.sum())
        self.count += int(mass.size)

    def report(self) -> float | None:
        return self.total / self.count if self.count else None


def _holds(spec: dict[str, Any] | None) -> tuple[str | None, float | None]:
    """What a codec's values hold and at what temperature, from its spec (None: unknown)."""
    if spec is None:
        return None, None
    holds = spec.get("holds")
    if holds is None and spec.get("name") == "topk" and spec.get("log_softmax"):
        holds = "logprobs"  # an earlier top-k layout: log-probabilities at the logits' scale
    temperature = spec.get("temperature")
    if temperature is None and holds is not None:
        temperature = 1.0
    return holds, temperature


def _column_bytes(kf: Any) -> dict[str, int]:
    """Bytes of every stored column: its Arrow buffers (uncompressed; a variable-length column
    with its int64 offsets, one per sample and one per batch)."""
    table = kf.to_arrow()
    return {
        name: sum(buf.size for chunk in table.column(name).chunks for buf in chunk.buffers() if buf)
        for name in table.column_names
    }


def _key_infos(kf: Any) -> dict[str, Any]:
    """Per key: its description, codec, what the codec holds, columns and stored bytes."""
    storage = kf.storage
    # stored bytes from the mapped columns; a compressed file would be decompressed whole
    sized = kf.num_batches > 0 and kf.compression is None
    col_bytes = _column_bytes(kf) if sized else {}
    keys: dict[str, Any] = {}
    for key, field in kf.desc.items():
        holds, temperature = _holds(storage[key]["codec"])
        columns = storage[key]["columns"]
        keys[key] = {
            **field,
            "codec": storage[key]["codec"],
            "holds": holds,
            "temperature": temperature,
            "columns": [
                {"name": c["name"], "dtype": c["dtype"], "shape": c["shape"]} for c in columns
            ],
            "stored_bytes": sum(col_bytes.get(c["name"], 0) for c in columns) if sized else None,
        }
    return keys


def _read_pass(kf: Any, keys: dict[str, Any], ragged: list[str], stats: bool) -> dict[str, int]:
    """Read every batch once (unless neither ``stats`` nor ``ragged``): the tokens of each
    ragged key (returned), and with ``stats`` each key's min / max / mean and top-k mass (into
    ``keys``); then the bytes per token and per sample of every key."""
    key_tokens = dict.fromkeys(ragged, 0)
    running = {key: _Stats() for key in keys}
    masses = {key: _Mass() for key in keys}
    for chunk in kf.iter_chunks() if stats or ragged else ():
        for key in ragged:
            key_tokens[key] += _tokens(chunk.data[key])
        if stats:
            for key, value in chunk.data.items():
                running[key].add(value)
                masses[key].add(value)
    for key, info in keys.items():
        if stats:
            info.update(running[key].report())
            info["topk_mass"] = masses[key].report()
        n, stored = key_tokens.get(key), info["stored_bytes"]
        info["bytes_per_token"] = stored / n if n and stored is not None else None
        info["bytes_per_sample"] = (
            stored / kf.num_samples if kf.num_samples and stored is not None else None
        )
    return key_tokens


def inspect_report(path: str | Path, *, stats: bool = True) -> dict[str, Any]:
    """Everything ``pantheon inspect`` shows about a knowledge file, as a JSON-able dict.

    Args:
        path: a knowledge file or a directory of shards.
        stats: also read every value to compute per-key min / max / mean and the top-k mass
            (default True).

    Per key, besides its description: ``codec``, ``holds`` (``"logits"``, ``"logprobs"``,
    ``"samples"`` or None) and ``temperature`` from the codec's spec, ``columns``,
    ``stored_bytes`` (its columns' Arrow buffers, offsets included; None for a compressed
    file),
    ``bytes_per_token`` (token knowledge) and ``bytes_per_sample``; with ``stats``, ``min``,
    ``max``, ``mean`` (of the kept entries for top-k, of the counts for samples) and
    ``topk_mass``: the mean over positions of the probability mass the top-k entries hold
    (``sum(exp(values))`` for log-probabilities; with a tail, ``sum(exp(v)) / (sum(exp(v)) +
    exp(tail))``; None otherwise).

    Raises:
        FileFormatError: the path is missing or not a readable knowledge file.
    """
    from .._files import FORMAT_VERSION, KnowledgeFile

    with KnowledgeFile(path, sparse_topk=True) as kf:  # top-k stays sparse: stats of kept entries
        sizes = kf.batch_sizes()
        ragged = [key for key, field in kf.desc.items() if field["lod_level"]]
        keys = _key_infos(kf)
        key_tokens = _read_pass(kf, keys, ragged, stats)
        tokens = key_tokens[ragged[0]] if ragged else 0
        cut = kf.truncated
        return {
            "path": str(kf.path),
            "shards": [str(p) for p in kf.shards],
            "format": FORMAT_VERSION,
            "written_by": kf.version,
            "samples": kf.num_samples,
            "batches": kf.num_batches,
            "batch_size_min": min(sizes) if sizes else None,
            "batch_size_max": max(sizes) if sizes else None,
            "bytes": kf.nbytes,
            "bytes_per_sample": kf.nbytes / kf.num_samples if kf.num_samples else None,
            "tokens": tokens if ragged else None,
            "bytes_per_token": kf.nbytes / tokens if tokens else None,
            "compression": kf.compression,
            "codecs": kf.codecs,
            "metadata": kf.metadata,
            "fingerprint": kf.fingerprint,
            "dataset_fingerprint": kf.dataset_fingerprint,
            "truncated": None
            if cut is None
            else {
                "path": cut.path,
                "complete_batches": cut.complete_batches,
                "complete_samples": cut.complete_samples,
                "offset": cut.offset,
            },
            "keys": keys,
        }


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _bytes_text(report: dict[str, Any]) -> str:
    return f"{report['bytes']:,} ({_num(report['bytes_per_sample'])} per sample)"


def _tokens_text(report: dict[str, Any]) -> str:
    return f"{report['tokens']:,} ({_num(report['bytes_per_token'])} bytes per token)"


def size_line(report: dict[str, Any]) -> str:
    """One line on a file's size, with the figures and units of :func:`format_report`'s table.

    E.g. ``50 samples in 5 batches, 2,370 bytes on disk (47.4 per sample)``, followed by
    ``, 1,000 tokens (2.37 bytes per token)`` for a file with a ragged (lod_level 1) key.
    """
    line = (
        f"{report['samples']:,} samples in {report['batches']:,} batches, "
        f"{report['bytes']:,} bytes on disk ({_num(report['bytes_per_sample'])} per sample)"
    )
    if report.get("tokens"):
        line += f", {report['tokens']:,} tokens ({_num(report['bytes_per_token'])} bytes per token)"
    return line


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_report`'s dict."""
    cut = report["truncated"]
    lines = _table(
        [
            ["knowledge file", report["path"]],
            ["shards", str(len(report["shards"]))],
            ["format", f"{report['format']} (written by pantheon {report['written_by'] or '?'})"],
            ["samples", f"{report['samples']:,}"],
            [
                "batches",
                f"{report['batches']:,} (sizes {_num(report['batch_size_min'])}"
                f"..{_num(report['batch_size_max'])})",
            ],
            ["bytes on disk", _bytes_text(report)],
            *([["tokens", _tokens_text(report)]] if report.get("tokens") else []),
            ["compression", report["compression"] or "none"],
            [
                "cut short",
                "no"
                if cut is None
                else f"YES: {cut['path']} stops at byte {cut['offset']:,} after "
                f"{cut['complete_batches']} complete batches ({cut['complete_samples']} samples)",
            ],
            ["metadata", ", ".join(f"{k}={v}" for k, v in report["metadata"].items()) or "-"],
            ["teacher fingerprint", report.get("fingerprint") or "-"],
            ["dataset fingerprint", report.get("dataset_fingerprint") or "-"],
        ]
    )
    rows = [["key", "shape", "dtype", "lod", "stored as", "min", "max", "mean", "bytes/token",
             "holds", "T", "top-k mass"]]  # fmt: skip
    for key, info in report["keys"].items():
        codec = info["codec"]
        stored = ", ".join(c["dtype"] for c in info["columns"])
        if codec is not None:
            stored += f" ({codec['name']})"
        per = info.get("bytes_per_token")
        per_sample = info.get("bytes_per_sample")
        per_text = (
            _num(per)
            if per is not None
            else ("-" if per_sample is None else f"{_num(per_sample)}/sample")
        )
        rows.append(
            [key, str(info["shape"]), info["dtype"], str(info["lod_level"]), stored]
            + [_num(info.get(s)) for s in ("min", "max", "mean")]
            + [per_text, info.get("holds") or "-", _num(info.get("temperature"))]
            + [_num(info.get("topk_mass"))]
        )
    return "\n".join([*lines, "", *_table(rows)])
