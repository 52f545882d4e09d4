"""A knowledge file as a Hugging Face ``datasets.Dataset`` (``pantheon.hf``)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .._errors import missing_extra


def knowledge_dataset(path: str | os.PathLike[str], *, allow_truncated: bool = True) -> Any:
    """A knowledge file (or directory of shards) as a Hugging Face ``datasets.Dataset``.

    The dataset is built on the memory-mapped Arrow table of the file: nothing is copied
    (nor decoded). Its columns are the file's stored columns (``docs/format.md``):
    ``__sample_id__``, then one per key, or one per stored part of a key with a codec
    (``logits@values``, ``logits@indices`` for top-k), in their storage dtypes (a key stored
    with a float16 cast is float16; bool is uint8, bfloat16 its uint16 bits); a field of
    shape ``[-1, d1, d2]`` is a list of ``d1 * d2`` values per sample, a variable-length field
    a list per sample. ``datasets`` sees an in-memory table: with loader workers started by
    ``fork`` (the Linux default) nothing is copied, while pickling the dataset (``spawn``
    workers, ``save_to_disk``) copies the data; :class:`pantheon.torch.KnowledgeLookup`
    reads by path instead.

    Args:
        path: the knowledge file or directory of shards.
        allow_truncated: read a cut-short file up to its last complete batch (default True).

    Raises:
        MissingDependencyError: ``datasets`` is not installed (``pip install datasets``).
        FileFormatError: not a readable knowledge file.
    """
    try:
        import datasets
    except ImportError as exc:
        raise missing_extra("datasets", "hf", feature="pantheon.hf.knowledge_dataset") from exc
    from .._files import KnowledgeFile

    with KnowledgeFile(path, allow_truncated=allow_truncated) as kf:
        table = kf.to_arrow()  # its buffers keep the mapping alive after close
        stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in kf.shards]
    fingerprint = hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]  # no hashing of data
    return datasets.Dataset(table, fingerprint=fingerprint)
