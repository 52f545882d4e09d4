"""Codecs: how each knowledge field is stored on disk and sent on the wire.

The seam of the codec layer. Files (:mod:`pantheon._files`) and the wire
(:mod:`pantheon._online`) both go through :func:`resolve_codecs`, :func:`encode_batch` and
:func:`decode_batch`; codecs are rebuilt from specs only through the registry
(:func:`codec_from_spec`). Built in: :class:`Cast` (``"cast"``), :class:`TopK`
(``"topk"``, with :class:`SparseTopK`, its sparse form), :class:`Sampled` (``"sampled"``,
with :class:`SparseSamples`), :class:`IntCast` (``"int"``), :class:`Packed`
(``"packed"``) and :class:`Quant8` (``"quant8"``).
"""

from __future__ import annotations

from .base import (
    FLOAT_DTYPES,
    Codec,
    CodecFactory,
    codec_from_spec,
    register_codec,
    registered_codecs,
)
from .batch import (
    PartKey,
    StoredParts,
    column_name,
    decode_batch,
    decode_field,
    encode_batch,
    resolve_codecs,
)
from .bits import bits_for, pack_bits, packed_size, unpack_bits
from .cast import CAST_ALIASES, Cast
from .ints import IntCast, Packed
from .quant import Quant8, dequantize
from .sampled import Sampled, SparseSamples
from .sparse import HOLDS, SparseTopK
from .topk import TopK, index_dtype, unpack_indices

__all__ = [
    "CAST_ALIASES",
    "FLOAT_DTYPES",
    "HOLDS",
    "Cast",
    "Codec",
    "CodecFactory",
    "IntCast",
    "Packed",
    "PartKey",
    "Quant8",
    "Sampled",
    "SparseSamples",
    "SparseTopK",
    "StoredParts",
    "TopK",
    "bits_for",
    "codec_from_spec",
    "column_name",
    "decode_batch",
    "decode_field",
    "dequantize",
    "encode_batch",
    "index_dtype",
    "pack_bits",
    "packed_size",
    "register_codec",
    "registered_codecs",
    "resolve_codecs",
    "unpack_bits",
    "unpack_indices",
]
