"""Knowledge chunks on the wire: sample ids and the stored parts of a batch, without copies.

:func:`encode_parts` gives a header ``{"chunk": {"samples": n, "fields": [[key, part, dtype,
inner shape, lod level], ...]}}`` and the frames: the ids (int64), then per stored part one
frame (dense) or two (ragged: values, then int64 lengths). ``(key, part)`` are the stored
parts of :func:`pantheon._codecs.encode_batch` (part ``""``: the field itself), carried as a
pair, never as a string to split. Received arrays are views of the frames after their sizes
were checked against dtype, shape and sample count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import KnowledgeError, ProtocolError
from .._knowledge import Ragged, Value
from .._util import lengths_total, short_repr
from .core import Frame, Pieces
from .values import array_view, as_frame, wire_array

__all__ = ["decode_parts", "encode_joined", "encode_parts"]

_NAME_OF_INT64 = np.dtype(np.int64)


def encode_parts(
    ids: np.ndarray, parts: Mapping[tuple[str, str], Value]
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Header and frames of a chunk's ids and stored parts (no copies of contiguous arrays).

    The header is ``{"chunk": {...}}``; callers may add their own keys to it.

    Raises:
        KnowledgeError: ids that are not 1-D, or parts of unsupported dtypes or of another
            sample count than the ids.
    """
    ids = np.asarray(ids)
    if ids.dtype != _NAME_OF_INT64:
        ids = ids.astype(np.int64)
    if ids.ndim != 1:
        raise KnowledgeError(f"chunk ids must be a 1-D int64 array, got shape {list(ids.shape)}")
    n = int(ids.shape[0])
    frames = [as_frame(ids, "int64")]
    fields: list[list[Any]] = []
    for (key, part), value in parts.items():
        if isinstance(value, Ragged):
            dname, values = wire_array(value.values)
            samples = len(value.lengths)
            frames.append(as_frame(values, dname))
            frames.append(as_frame(value.lengths, "int64"))
            fields.append([key, part, dname, list(values.shape[1:]), 1])
        else:
            dname, arr = wire_array(np.asarray(value))
            if arr.ndim == 0:
                raise KnowledgeError(f"chunk field {key!r} is a 0-d array; expected [samples, ...]")
            samples = int(arr.shape[0])
            frames.append(as_frame(arr, dname))
            fields.append([key, part, dname, list(arr.shape[1:]), 0])
        if samples != n:
            raise KnowledgeError(
                f"chunk field {key!r} has {samples} samples but the chunk has {n} ids"
            )
    return {"chunk": {"samples": n, "fields": fields}}, frames


def encode_joined(
    chunks: Sequence[tuple[np.ndarray, Mapping[tuple[str, str], Value]]],
) -> tuple[dict[str, Any], list[Frame]] | None:
    """Header and frames of consecutive chunks sent as one, without copying their arrays.

    Each frame is the chunks' frames as :class:`~pantheon._wire.Pieces`: the ids, values and
    ragged lengths of C-contiguous arrays joined along the sample axis are the bytes of the
    arrays joined, so the receiver decodes one chunk with :func:`decode_parts`.

    Returns:
        The header and frames, or None when the chunks' fields differ (in keys, parts,
        dtypes, inner shapes or kinds): those must be joined by concatenation.

    Raises:
        KnowledgeError: as :func:`encode_parts`.
    """
    encoded = [encode_parts(ids, parts) for ids, parts in chunks]
    fields = encoded[0][0]["chunk"]["fields"]
    if any(head["chunk"]["fields"] != fields for head, _ in encoded[1:]):
        return None
    samples = sum(int(head["chunk"]["samples"]) for head, _ in encoded)
    frames: list[Frame] = [Pieces(parts) for parts in zip(*(f for _, f in encoded), strict=True)]
    return {"chunk": {"samples": samples, "fields": fields}}, frames


def _check_field(f: Any) -> None:
    if not (
        isinstance(f, list)
        and len(f) == 5
        and isinstance(f[0], str)
        and isinstance(f[1], str)
        and isinstance(f[3], list)
        and f[4] in (0, 1)
        and not isinstance(f[4], bool)
    ):
        raise ProtocolError(
            f"malformed chunk field {short_repr(f, 200)}: expected [key, part, dtype, shape list, lod 0|1]"
        )


def decode_parts(
    header: Mapping[str, Any], frames: Sequence[Any]
) -> tuple[np.ndarray, dict[tuple[str, str], Value]]:
    """The ids and stored parts of a header and frames made by :func:`encode_parts`.

    Raises:
        ProtocolError: a malformed description, a wrong number of frames, a part given twice,
            ragged lengths that are negative or overflow, or frame sizes that do not match
            the described dtypes, shapes and sample counts.
    """
    spec = header.get("chunk") if isinstance(header, Mapping) else None
    if not isinstance(spec, dict):
        raise ProtocolError("a knowledge message must have a 'chunk' map in its header")
    n = spec.get("samples")
    fields = spec.get("fields")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or not isinstance(fields, list):
        raise ProtocolError(f"malformed chunk description {short_repr(spec, 200)}")
    for f in fields:
        _check_field(f)
    want = 1 + sum(1 + f[4] for f in fields)
    if len(frames) != want:
        raise ProtocolError(
            f"a chunk of {len(fields)} fields needs {want} frames, the message has {len(frames)}"
        )
    ids = array_view(frames[0], "int64", [n], "chunk ids")
    parts: dict[tuple[str, str], Value] = {}
    k = 1
    for key, part, dname, inner, lod in fields:
        where = f"chunk field {key!r}" + (f" part {part!r}" if part else "")
        if (key, part) in parts:
            raise ProtocolError(f"{where} appears twice")
        if lod == 0:
            parts[(key, part)] = array_view(frames[k], dname, [n, *inner], where)
            k += 1
            continue
        lengths = array_view(frames[k + 1], "int64", [n], f"lengths of {where}")
        try:
            rows = lengths_total(lengths)
        except KnowledgeError as exc:
            raise ProtocolError(f"{where}: {exc}") from None
        values = array_view(frames[k], dname, [rows, *inner], where)
        parts[(key, part)] = Ragged(values, lengths)
        k += 2
    return ids, parts
