"""Finishing a knowledge file whose writer was stopped: its complete batches, with a footer.

A file cut short (its writer killed) is still readable (:class:`~pantheon.KnowledgeFile`
reads its complete batches and says what was cut); :func:`repair` rewrites it as a complete
file holding exactly those batches, byte for byte the same schema and metadata, so that it
can be read without a warning and written after (the student's write-through cache does this
when it resumes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from .._errors import FileFormatError
from .shard import FILE_MAGIC, READ_ERRORS

__all__ = ["repair"]


def repair(path: str | os.PathLike[str]) -> int:
    """Rewrite a cut-short knowledge file as a complete one; return its batches.

    A complete file is left as it is. The new file replaces the old one atomically (written
    beside it, then renamed).

    Raises:
        FileFormatError: not an Arrow IPC knowledge file, or cut before its schema.
    """
    file = Path(path)
    with pa.memory_map(str(file), "r") as mapped:
        buf = mapped.read_buffer()
        if buf.size < 8 or buf.slice(0, 6).to_pybytes() != FILE_MAGIC[:6]:
            raise FileFormatError(f"{file}: not an Arrow IPC file; it cannot be repaired")
        try:
            return int(pa.ipc.open_file(buf).num_record_batches)
        except READ_ERRORS:
            pass  # no valid footer: cut short
        try:
            reader = pa.ipc.open_stream(buf.slice(8))
        except READ_ERRORS as exc:
            raise FileFormatError(f"{file}: cut before its schema ({exc}); dump it again") from None
        batches = []
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
            except READ_ERRORS:
                break  # the cut: what came before is complete
        tmp = file.with_name(file.name + ".repairing")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    os.replace(tmp, file)
    return len(batches)
