"""Offline knowledge generation with Ray Data: a dataset through a teacher, as knowledge shards.

:func:`generate_knowledge` keys every row by its shard, ``id // shard_samples``, leaves out
the rows of shards already complete, groups the rest by shard and runs each group through
the teacher program on an actor pool (``map_groups`` with a callable class: the model is
built once per actor, with ``num_gpus`` each). An actor writes its shard whole under a
temporary name, syncs it to disk and renames it to ``part-KKKKKKKKKK.arrow``: a shard under
its final name is complete, so a job killed half-way leaves nothing that passes for a shard,
and running it again computes only what is missing.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError, FileFormatError, KnowledgeError
from .._files import KnowledgeFile, KnowledgeWriter
from .._service import ServiceSpec, make_query_handler
from .._util import check_int

__all__ = ["SHARD_KEY", "generate_knowledge", "shard_name"]

log = logging.getLogger("pantheon")

SHARD_KEY = "__pantheon_shard"
"""The column :func:`generate_knowledge` adds to group rows by shard."""

_FINAL = re.compile(r"part-(\d{10})\.arrow")
_TEMP = re.compile(r"\.part-\d{10}\.arrow\.[0-9a-f]{32}\.tmp")


def shard_name(key: int) -> str:
    """The file name of shard ``key`` (ids ``key * shard_samples`` up to the next shard)."""
    return f"part-{key:010d}.arrow"


def _complete_shards(out: Path) -> set[int]:
    """The shards of ``out`` that are whole; stale temporary files and shards that do not
    read back whole are removed (they are computed again)."""
    done: set[int] = set()
    for path in sorted(out.iterdir()):
        if _TEMP.fullmatch(path.name):
            log.info("removing %s, a shard a stopped job did not finish", path)
            path.unlink()
            continue
        match = _FINAL.fullmatch(path.name)
        if match is None:
            continue
        try:
            KnowledgeFile(path, allow_truncated=False).close()
        except FileFormatError as exc:
            log.warning("%s does not read back whole (%s); computing it again", path, exc)
            path.unlink()
            continue
        done.add(int(match.group(1)))
    return done


class _ShardWriter:
    """A Ray Data actor: the teacher program, and each group of rows written as one shard."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._o = dict(options)
        spec = ServiceSpec(
            tuple(self._o["feed_list"]), self._o["schema"], self._o["program"], None, self._o["exe"]
        )
        self._handle = make_query_handler(spec)

    def __call__(self, group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        o = self._o
        ids = np.asarray(group[o["id_column"]]).astype(np.int64, copy=False)
        key = int(np.asarray(group[SHARD_KEY])[0])
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
            dup = int(ids[1:][ids[1:] == ids[:-1]][0])
            raise KnowledgeError(
                f"generate_knowledge: the id {dup} appears twice in column {o['id_column']!r}; "
                "every row needs its own sample id"
            )
        feeds = {f: _feed(group, f, order) for f in o["feed_list"]}
        out = Path(o["out_path"])
        final = out / shard_name(key)
        temp = out / f".{final.name}.{uuid.uuid4().hex}.tmp"
        step = o["batch_size"]
        writer = KnowledgeWriter(
            temp, use_fp16=o["use_fp16"], codecs=o["codecs"], compression=o["compression"]
        )
        try:
            for lo in range(0, len(ids), step):
                batch = {f: v[lo : lo + step] for f, v in feeds.items()}
                writer.write(self._handle(batch), ids=ids[lo : lo + step])
            writer.close()
            _sync(temp)
            os.replace(temp, final)
            _sync(out)
        except BaseException:
            writer.close()
            temp.unlink(missing_ok=True)
            raise
        return {"shard": np.array([key], np.int64), "samples": np.array([len(ids)], np.int64)}


def _feed(group: Mapping[str, np.ndarray], name: str, order: np.ndarray) -> Any:
    if name not in group:
        raise ConfigError(
            f"generate_knowledge: feed {name!r} is not a column of the dataset (columns: "
            f"{sorted(k for k in group if k != SHARD_KEY)})"
        )
    column = np.asarray(group[name])[order]
    return list(column) if column.dtype == object else column  # per-sample arrays: ragged


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_knowledge(
    dataset: Any,
    out_path: str | os.PathLike[str],
    *,
    feed_list: Sequence[str],
    schema: Mapping[str, str],
    program: Any,
    batch_size: int,
    concurrency: int | tuple[int, int] = 1,
    num_gpus: float = 0,
    num_cpus: float = 1,
    id_column: str = "id",
    codecs: Mapping[str, Any] | None = None,
    use_fp16: bool = False,
    shard_samples: int = 4096,
    exe: Any = None,
    compression: str | None = None,
) -> dict[str, Any]:
    """Run a ``ray.data.Dataset`` through a teacher and write its knowledge as shards.

    The output directory is one knowledge source: ``Student.register_teacher(in_path=...)``,
    :class:`~pantheon.KnowledgeFile` and ``take`` read it, with the sample ids of
    ``id_column``. Shard ``k`` holds the rows whose id is in ``[k * shard_samples, (k + 1) *
    shard_samples)``, in id order; running again over the same ``out_path`` computes only
    the shards that are missing or did not read back whole.

    Args:
        dataset: the rows, with a column per feed of ``feed_list`` and the ids (int >= 0).
        out_path: the directory of the shards (created).
        feed_list / schema / program: as :meth:`~pantheon.Teacher.start_knowledge_service`
            (``program``: a callable, a ``torch.nn.Module``, an ``.onnx`` path...; it is
            serialized by Ray to each actor).
        batch_size: samples per program call.
        concurrency: actors (an int, or ``(min, max)`` for an autoscaling pool; default 1).
        num_gpus / num_cpus: resources per actor (defaults 0 and 1); with GPUs pass
            ``exe="cuda:0"`` (each actor sees its own GPU as device 0).
        id_column: the column of sample ids (default ``"id"``).
        codecs / use_fp16 / compression: as :class:`~pantheon.KnowledgeWriter`.
        shard_samples: ids per shard (default 4096).
        exe: where each actor predicts, as ``start_knowledge_service``'s ``exe``.

    Returns:
        ``{"computed": [shard names written now], "kept": [shard names already complete],
        "samples": samples written now}``.

    Raises:
        ConfigError: bad arguments, a feed or the id column missing from the dataset.
        KnowledgeError: a duplicated or negative id. Whatever the program raises.
    """
    import ray.data

    if not isinstance(dataset, ray.data.Dataset):
        raise ConfigError(f"dataset must be a ray.data.Dataset, got {type(dataset).__name__}")
    step = check_int("batch_size", batch_size, unit="samples")
    per_shard = check_int("shard_samples", shard_samples, unit="samples")
    ServiceSpec(tuple(feed_list), schema, program, None, exe)  # checks the arguments here
    out = Path(out_path)
    out.mkdir(parents=True, exist_ok=True)
    done = _complete_shards(out)
    done_keys = np.array(sorted(done), dtype=np.int64)

    def keyed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if id_column not in batch:
            raise ConfigError(
                f"generate_knowledge: the id column {id_column!r} is not in the dataset "
                f"(columns: {sorted(batch)}); pass id_column="
            )
        ids = np.asarray(batch[id_column])
        if ids.dtype.kind not in "iu" or (ids.size and ids.min() < 0):
            raise KnowledgeError(
                f"generate_knowledge: column {id_column!r} must hold integer ids >= 0, got "
                f"dtype {ids.dtype}"
            )
        keys = ids.astype(np.int64) // per_shard
        keep = ~np.isin(keys, done_keys)
        out_batch = {k: np.asarray(v)[keep] for k, v in batch.items()}
        out_batch[SHARD_KEY] = keys[keep]
        return out_batch

    options = {
        "feed_list": list(feed_list),
        "schema": dict(schema),
        "program": program,
        "exe": exe,
        "id_column": id_column,
        "out_path": str(out),
        "batch_size": step,
        "use_fp16": bool(use_fp16),
        "codecs": dict(codecs) if codecs else None,
        "compression": compression,
    }
    rows = (
        dataset.map_batches(keyed, batch_format="numpy")
        .groupby(SHARD_KEY)
        .map_groups(
            _ShardWriter,
            fn_constructor_kwargs={"options": options},
            batch_format="numpy",
            concurrency=concurrency,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
        )
        .take_all()
    )
    computed = sorted(int(r["shard"]) for r in rows)
    log.info(
        "generate_knowledge: %d shard(s) written to %s, %d already complete",
        len(computed),
        out,
        len(done),
    )
    return {
        "computed": [shard_name(k) for k in computed],
        "kept": [shard_name(k) for k in sorted(done)],
        "samples": int(sum(int(r["samples"]) for r in rows)),
    }
