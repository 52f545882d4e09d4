"""Knowledge on the wire: chunks with their codecs applied, coalesced into one message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._codec import Codec, column_name, decode_field
from ._knowledge import Chunk, Description, Knowledge, concat_values
from ._values import decode_chunk, encode_chunk

__all__ = ["decode_data", "decode_payload", "encode_chunks", "encode_data"]


def encode_data(data: Knowledge, codecs: Mapping[str, Codec]) -> Knowledge:
    """The stored parts of a batch: codec'd keys become ``key`` / ``key@suffix`` parts."""
    if not codecs:
        return data
    out: Knowledge = {}
    for key, value in data.items():
        codec = codecs.get(key)
        if codec is None:
            out[key] = value
        else:
            for suffix, part in codec.encode(value).items():
                out[column_name(key, suffix)] = part
    return out


def decode_data(
    stored: Knowledge, desc: Description, codecs: Mapping[str, Codec], *, sparse: bool = False
) -> Knowledge:
    """Rebuild the batch of ``desc`` from its stored parts (casting back, densifying...)."""
    if not codecs:
        return stored
    out: Knowledge = {}
    for key, field in desc.items():
        codec = codecs.get(key)
        if codec is None:
            out[key] = stored[key]
            continue
        prefix = key + "@"
        parts = {
            ("" if name == key else name[len(prefix) :]): value
            for name, value in stored.items()
            if name == key or name.startswith(prefix)
        }
        out[key] = decode_field(codec, parts, field, sparse=sparse)
    return out


def encode_chunks(
    chunks: Sequence[Chunk], codecs: Mapping[str, Codec]
) -> tuple[dict[str, Any], list[Any]]:
    """One message's header and frames for consecutive chunks (coalesced into one chunk)."""
    if len(chunks) == 1:
        chunk = chunks[0]
    else:
        ids = np.concatenate([c.ids for c in chunks])
        data = {k: concat_values([c.data[k] for c in chunks]) for k in chunks[0].data}
        chunk = Chunk(ids, data)
    return encode_chunk(Chunk(chunk.ids, encode_data(chunk.data, codecs)))


def decode_payload(
    header: Mapping[str, Any],
    frames: Sequence[Any],
    desc: Description,
    codecs: Mapping[str, Codec],
    *,
    sparse: bool = False,
) -> Chunk:
    """The chunk of a DATA/ANSWER message, decoded back to ``desc``'s dtypes."""
    chunk = decode_chunk(dict(header), list(frames))
    return Chunk(chunk.ids, decode_data(chunk.data, desc, codecs, sparse=sparse))
