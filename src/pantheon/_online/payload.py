"""Knowledge on the wire: chunks through their codecs (:mod:`pantheon._codecs`), coalesced
into one message, and back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._chunks import concat_chunks
from .._codecs import Codec, decode_batch, encode_batch
from .._errors import ProtocolError
from .._knowledge import Chunk, Description, Knowledge
from .._wire import decode_parts, encode_parts

__all__ = ["decode_payload", "decode_plain", "encode_chunks"]


def encode_chunks(
    chunks: Sequence[Chunk], codecs: Mapping[str, Codec]
) -> tuple[dict[str, Any], list[Any]]:
    """One message's header and frames for consecutive chunks (coalesced into one chunk).

    Raises:
        KnowledgeError: a codec's part that clashes with another key (see
            :func:`pantheon._codecs.encode_batch`).
    """
    chunk = concat_chunks(chunks)
    return encode_parts(chunk.ids, encode_batch(chunk.data, codecs))


def decode_payload(
    header: Mapping[str, Any],
    frames: Sequence[Any],
    desc: Description,
    codecs: Mapping[str, Codec],
    *,
    sparse: bool = False,
) -> Chunk:
    """The chunk of a DATA/ANSWER message, decoded back to ``desc``'s dtypes."""
    ids, parts = decode_parts(header, frames)
    return Chunk(ids, decode_batch(parts, desc, codecs, sparse=sparse))


def decode_plain(header: Mapping[str, Any], frames: Sequence[Any]) -> Chunk:
    """A chunk sent without codecs (a query: the student's own feeds).

    Raises:
        ProtocolError: a part other than the fields themselves.
    """
    ids, parts = decode_parts(header, frames)
    data: Knowledge = {}
    for (key, part), value in parts.items():
        if part:
            raise ProtocolError(f"a query carries only plain fields, got part {part!r} of {key!r}")
        data[key] = value
    return Chunk(ids, data)
