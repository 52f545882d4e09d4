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
from .shard import FILE_MAGIC, READ_ERRORS, CutShort, Shard

__all__ = ["repair"]


def repair(path: str | os.PathLike[str]) -> int:
    """Rewrite a cut-short knowledge file as a complete one; return its batches.

    A complete file is left as it is. The new file replaces the old one atomically (written
    beside it, then renamed), with the batches' compression kept; each batch is checked as
    the reader checks it (sizes before decompressing) before it is written again.

    Raises:
        FileFormatError: not an Arrow IPC knowledge file, cut before its schema, or a batch
            the reader would refuse.
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
            schema = pa.ipc.open_stream(buf.slice(8)).schema
        except READ_ERRORS as exc:
            raise FileFormatError(f"{file}: cut before its schema ({exc}); dump it again") from None
    try:
        shard: Shard | None = Shard(file)  # a knowledge file's layout, its complete batches
    except CutShort:
        shard = None  # cut before its first complete batch: the schema alone is kept
    tmp = file.with_name(file.name + ".repairing")
    try:
        if shard is None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema):
                pass
            count = 0
        else:
            count = _rewrite(shard, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if shard is not None:
            shard.close()
    os.replace(tmp, file)
    return count


def _rewrite(shard: Shard, tmp: Path) -> int:
    """Write ``shard``'s complete batches, checked, to ``tmp`` as a complete file."""
    options = pa.ipc.IpcWriteOptions(compression=shard.compression)
    count = len(shard.messages)
    with (
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, shard.schema, options=options) as writer,
    ):
        for i in range(count):
            try:
                writer.write_batch(shard.read(i))
            except READ_ERRORS as exc:
                raise FileFormatError(
                    f"{shard.path}: batch {i} cannot be read ({exc}); the file is corrupt, "
                    "dump the knowledge again"
                ) from None
    return count
