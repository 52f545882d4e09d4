"""Knowledge on the wire: chunks through their codecs (:mod:`pantheon._codecs`), coalesced
into one message, and back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._chunks import JOIN_MIN_BYTES, chunk_nbytes, concat_chunks
from .._codecs import Codec, StoredParts, decode_batch, encode_batch
from .._errors import ProtocolError
from .._knowledge import Chunk, Description, Knowledge
from .._wire import Frame, MsgType, decode_parts, encode_joined, encode_parts, frames_nbytes

__all__ = ["Counters", "EncodedData", "decode_payload", "decode_plain", "encode_chunks"]


def encode_chunks(
    chunks: Sequence[Chunk],
    codecs: Mapping[str, Codec],
    observe: Callable[[StoredParts, Mapping[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[Frame]]:
    """One message's header and frames for consecutive chunks, coalesced into one chunk.

    Chunks of :data:`pantheon._chunks.JOIN_MIN_BYTES` or more on average are joined without a
    copy (each frame gathered from the chunks' arrays, :func:`pantheon._wire.encode_joined`);
    smaller ones are concatenated (one copy, cheaper than many small pieces).

    Args:
        chunks: consecutive chunks of one round.
        codecs: the teacher's codecs.
        observe: called with each encoded set of parts (the teacher's top-k mass metric).

    Raises:
        KnowledgeError: a codec's part that clashes with another key (see
            :func:`pantheon._codecs.encode_batch`).
    """
    if len(chunks) > 1 and sum(chunk_nbytes(c) for c in chunks) >= JOIN_MIN_BYTES * len(chunks):
        parts = [encode_batch(c.data, codecs, ids=c.ids) for c in chunks]
        joined = encode_joined([(c.ids, p) for c, p in zip(chunks, parts, strict=True)])
        if joined is not None:
            if observe is not None:
                for p in parts:
                    observe(p, codecs)
            return joined
    whole = concat_chunks(chunks)
    stored = encode_batch(whole.data, codecs, ids=whole.ids)
    if observe is not None:
        observe(stored, codecs)
    head, frames = encode_parts(whole.ids, stored)
    return head, list(frames)


def decode_payload(
    header: Mapping[str, Any],
    frames: Sequence[Any],
    desc: Description,
    codecs: Mapping[str, Codec],
    *,
    sparse: bool = False,
) -> Chunk:
    """The chunk of a DATA/ANSWER message, decoded back to ``desc``'s dtypes.

    Raises:
        ProtocolError: a part of a key the description does not list, or a part other than
            the field itself of a key without a codec (a field that is missing, or of another
            dtype or shape, is a :class:`~pantheon.KnowledgeError` of ``decode_batch`` and of
            the caller's check against ``desc``).
    """
    ids, parts = decode_parts(header, frames)
    for key, part in parts:
        if key not in desc or (part and key not in codecs):
            what = f"part {part!r} of knowledge {key!r}" if part else f"knowledge {key!r}"
            raise ProtocolError(
                f"a knowledge message carries {what}, which the description does not list "
                f"(it lists {list(desc)}); every message must hold exactly the described keys"
            )
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


class Counters(dict[str, float]):
    """The teacher's counters (``Teacher.stats()``), added to from many threads at once:
    ``stats[key] += n`` from two sender threads can lose one of the two."""

    def __init__(self, *keys: str) -> None:
        super().__init__(dict.fromkeys(keys, 0))
        self._lock = threading.Lock()

    def add(self, **amounts: float) -> None:
        """Add each amount to its counter."""
        with self._lock:
            for key, amount in amounts.items():
                self[key] += amount

    def snapshot(self) -> dict[str, float]:
        """A copy, all counters of one moment."""
        with self._lock:
            return dict(self)


class EncodedData:
    """One DATA message's chunks, encoded once (by the first sender thread that needs them)
    for every student it goes to; counted in ``stats`` (batches, samples, messages, bytes).

    Args:
        chunks: consecutive chunks, coalesced into one message.
        codecs: the teacher's codecs.
        stats: the teacher's counters.
        observe: called once with the encoded parts (the teacher's top-k mass metric).
    """

    def __init__(
        self,
        chunks: Sequence[Chunk],
        codecs: Mapping[str, Any],
        stats: Counters,
        observe: Callable[[StoredParts, Mapping[str, Any]], None] | None = None,
    ):
        self._chunks: Sequence[Chunk] | None = chunks
        self._codecs = codecs
        self._stats = stats
        self._observe = observe
        self._lock = threading.Lock()
        self._done: tuple[dict[str, Any], list[Frame]] | None = None
        self._nbytes = 0

    def message(self, extra: dict[str, Any]) -> tuple[int, dict[str, Any], list[Frame]]:
        with self._lock:
            if self._done is None:
                assert self._chunks is not None
                self._done = encode_chunks(self._chunks, self._codecs, self._observe)
                self._nbytes = frames_nbytes(self._done[1])
                samples = sum(len(c.ids) for c in self._chunks)
                self._stats.add(batches=len(self._chunks), samples=samples)
                self._chunks = None
            head, frames = self._done
        self._stats.add(messages=1, bytes=self._nbytes)
        return MsgType.DATA, {**head, **extra}, frames
