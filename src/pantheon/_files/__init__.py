"""Knowledge files: the Arrow IPC format, its writer and its memory-mapped reader.

The seam of the file layer (``docs/format.md`` gives every byte): :class:`KnowledgeWriter`
writes batch by batch, :class:`KnowledgeFile` reads a file or a directory of shards, cut-short
files included. Codecs come from :mod:`pantheon._codecs`.
"""

from __future__ import annotations

from .ipc import batch_info
from .layout import (
    COMPRESSIONS,
    FORMAT_VERSION,
    ID_COLUMN,
    ColumnSpec,
    Layout,
    arrow_type,
    parse_layout,
    shard_paths,
)
from .lm_head import LM_HEAD_DTYPES, read_lm_head, write_lm_head
from .reader import KnowledgeFile
from .recover import repair
from .writer import KnowledgeWriter

__all__ = [
    "COMPRESSIONS",
    "FORMAT_VERSION",
    "ID_COLUMN",
    "LM_HEAD_DTYPES",
    "ColumnSpec",
    "KnowledgeFile",
    "KnowledgeWriter",
    "Layout",
    "arrow_type",
    "batch_info",
    "parse_layout",
    "read_lm_head",
    "repair",
    "shard_paths",
    "write_lm_head",
]
