"""The knowledge model: knowledge batches, their description, dtypes and ragged fields.

A *knowledge batch* is a ``dict[str, value]`` whose values all hold the same number of
samples (the batch size, the first dimension). A value is either

* a ``numpy.ndarray`` of shape ``[batch, d1, d2, ...]`` (``lod_level`` 0), or
* a :class:`Ragged` field (``lod_level`` 1): samples whose lengths differ along axis 1,
  e.g. token sequences, stored without padding as concatenated ``values`` plus ``lengths``.

Framework tensors (anything with ``.detach().cpu().numpy()`` or ``.numpy()``) are accepted
at the edges and converted; a ``list``/``tuple`` of per-sample arrays becomes a Ragged field.

The *description* of knowledge is exactly the seed's shape::

    {name: {"shape": [-1, d1, ...], "dtype": "float32", "lod_level": 0}}

where a ragged field's shape is ``[-1, -1, d2, ...]`` and its ``lod_level`` is 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import numpy.typing as npt

from ._errors import ConfigError, KnowledgeError
from ._util import lengths_of_offsets, lengths_total

__all__ = [
    "DTYPE_NAMES",
    "FINGERPRINT_KEYS",
    "Chunk",
    "Description",
    "FieldDesc",
    "Knowledge",
    "Ragged",
    "Value",
    "check_batch",
    "check_desc",
    "check_fingerprint",
    "common_batch_size",
    "concat_values",
    "describe",
    "dtype_name",
    "normalize_batch",
    "num_samples",
    "slice_value",
    "to_dtype",
    "to_numpy",
]

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

_DTYPES: dict[str, np.dtype[Any]] = {
    "bool": np.dtype(np.bool_),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8),
    "float16": np.dtype(np.float16),
    "bfloat16": BFLOAT16,
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
DTYPE_NAMES: tuple[str, ...] = tuple(_DTYPES)
"""The dtype names a description may carry, as the contract lists them."""
_NAMED = ", ".join(DTYPE_NAMES)

FieldDesc = dict[str, Any]
"""One entry of a description: ``{"shape": [-1, ...], "dtype": str, "lod_level": 0 | 1}``."""
Description = dict[str, FieldDesc]
"""A knowledge description: field name -> :data:`FieldDesc`, in order."""


def to_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a description dtype name (``"bfloat16"`` via ``ml_dtypes``)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise KnowledgeError(f"unsupported dtype {name!r}: expected one of {_NAMED}") from None


_NAMES: dict[np.dtype[Any], str] = {}  # the supported dtypes met, named (``dt.name`` is slow)


def dtype_name(dtype: npt.DTypeLike) -> str:
    """The description name of a numpy dtype; raises :class:`KnowledgeError` if unsupported."""
    dt = np.dtype(dtype)
    if (name := _NAMES.get(dt)) is None:
        name = "bfloat16" if dt == BFLOAT16 else str(dt.name)
        if name not in _DTYPES or dt.byteorder == ">":
            raise KnowledgeError(
                f"unsupported dtype {dt!s}: knowledge arrays must be one of {_NAMED} (native "
                "byte order); cast the array with .astype(...) before sending it"
            )
        _NAMES[dt] = name
    return name


class Ragged:
    """A variable-length field (``lod_level`` 1): sample ``i`` has shape ``[lengths[i], *inner]``.

    Stored without padding: ``values`` concatenates the samples along axis 0 (shape
    ``[sum(lengths), *inner]``) and ``lengths`` (int64, shape ``[n]``) says where each ends.

    Args:
        values: the concatenated samples.
        lengths: the length of each sample along its first axis (axis 1 of the batch).
    """

    __slots__ = ("lengths", "values")

    def __init__(self, values: np.ndarray, lengths: npt.ArrayLike) -> None:
        values = np.asarray(values)
        lens = np.asarray(lengths, dtype=np.int64)
        if values.ndim < 1:
            raise KnowledgeError("Ragged values must have at least one dimension (the tokens)")
        if lens.ndim != 1:
            raise KnowledgeError(f"Ragged lengths must be 1-D, got shape {list(lens.shape)}")
        total = lengths_total(lens)
        if total != values.shape[0]:
            raise KnowledgeError(
                f"Ragged lengths sum to {total} but values hold {values.shape[0]} rows; "
                "values must be the samples concatenated along their first axis"
            )
        self.values = values
        self.lengths = lens

    @classmethod
    def from_offsets(cls, values: np.ndarray, offsets: np.ndarray) -> Ragged:
        """Samples ``values[offsets[i]:offsets[i + 1]]`` (views, no copy), from int64 offsets
        ``[n + 1]`` into the rows of ``values``, checked by
        :func:`~pantheon._util.lengths_of_offsets`.

        Raises:
            KnowledgeError: offsets outside the rows of ``values`` or that decrease.
        """
        lengths = lengths_of_offsets(offsets, int(values.shape[0]))
        out = cls.__new__(cls)
        out.values = values[int(offsets[0]) : int(offsets[-1])]
        out.lengths = lengths  # checked: >= 0, adding up to the rows just taken
        return out

    @classmethod
    def from_list(cls, samples: Sequence[npt.ArrayLike]) -> Ragged:
        """Build from a list of per-sample arrays of shapes ``[L_i, *inner]``."""
        arrays = [np.asarray(s) for s in samples]
        if not arrays:
            raise KnowledgeError("cannot build a Ragged field from an empty list of samples")
        inner = arrays[0].shape[1:]
        for i, a in enumerate(arrays):
            if a.ndim < 1 or a.shape[1:] != inner:
                raise KnowledgeError(
                    f"ragged sample {i} has shape {list(a.shape)}; expected [length, "
                    f"{', '.join(map(str, inner))}] like sample 0"
                )
        return cls(np.concatenate(arrays, axis=0), [a.shape[0] for a in arrays])

    @property
    def dtype(self) -> np.dtype[Any]:
        """dtype of the values."""
        return self.values.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by the values and lengths."""
        return int(self.values.nbytes + self.lengths.nbytes)

    @property
    def inner_shape(self) -> tuple[int, ...]:
        """Shape of one token (the dimensions after the variable one)."""
        return tuple(self.values.shape[1:])

    @property
    def offsets(self) -> np.ndarray:
        """int64 offsets of shape ``[n + 1]``: sample ``i`` is ``values[offsets[i]:offsets[i+1]]``."""
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        offs = self.offsets
        return self.values[offs[i] : offs[i + 1]]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ragged):
            return NotImplemented
        return bool(
            np.array_equal(self.lengths, other.lengths)
            and self.values.shape == other.values.shape
            and np.array_equal(self.values, other.values)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Ragged(samples={len(self)}, tokens={self.values.shape[0]}, "
            f"inner_shape={list(self.inner_shape)}, dtype={self.dtype})"
        )

    def to_list(self) -> list[np.ndarray]:
        """The samples as a list of arrays (views, no copy)."""
        offs = self.offsets
        return [self.values[offs[i] : offs[i + 1]] for i in range(len(self))]

    def padded(self, fill: Any = 0, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A padded copy ``[n, max_len, *inner]`` and the lengths (int64 ``[n]``).

        Args:
            fill: value of the padding positions (default 0).
            length: pad to this length instead of the longest sample.
        """
        n = len(self)
        max_len = int(self.lengths.max()) if n else 0
        width = max_len if length is None else length
        if width < max_len:
            raise KnowledgeError(f"cannot pad to length {width}: the longest sample has {max_len}")
        out = np.full((n, width, *self.inner_shape), fill, dtype=self.dtype)
        mask = np.arange(width)[None, :] < self.lengths[:, None]
        out[mask] = self.values
        return out, self.lengths.copy()

    def slice(self, start: int, stop: int) -> Ragged:
        """Samples ``start:stop`` (views of the values, no copy)."""
        offs = self.offsets
        return Ragged(self.values[offs[start] : offs[stop]], self.lengths[start:stop])

    def astype(self, dtype: npt.DTypeLike) -> Ragged:
        """The same field with values cast to ``dtype`` (no copy if already that dtype)."""
        return Ragged(self.values.astype(dtype, copy=False), self.lengths)

    @staticmethod
    def concat(parts: Sequence[Ragged]) -> Ragged:
        """Concatenate ragged fields sample-wise."""
        return Ragged(
            np.concatenate([p.values for p in parts], axis=0),
            np.concatenate([p.lengths for p in parts]),
        )


Value = np.ndarray | Ragged
"""One field of a knowledge batch."""
Knowledge = dict[str, Value]
"""A knowledge batch: field name -> value, all with the same number of samples."""


def to_numpy(value: Any) -> Any:
    """Convert a framework tensor (torch, paddle, jax, ...) to numpy; other values unchanged.

    The one conversion of the package, used for knowledge, messages and service feeds alike:
    a torch tensor is detached and moved to the CPU (a torch ``bfloat16`` tensor becomes a
    numpy ``bfloat16`` array through its bits, which numpy cannot read directly); a paddle
    tensor is copied to the host with ``numpy()`` (bfloat16 too, from the bits Paddle gives);
    other objects with a ``numpy()`` method (tensorflow) or ``__array__`` go through it. Lists, tuples,
    strings and bytes are returned as they are.
    """
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("paddle") and callable(getattr(value, "numpy", None)):
        arr = np.asarray(value.numpy())  # a paddle.Tensor, copied to the host
        return arr.view(BFLOAT16) if str(value.dtype) == "paddle.bfloat16" else arr
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        t = value.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            return t.view(_torch_int16()).numpy().view(BFLOAT16)
        return t.numpy()
    if hasattr(value, "numpy") and callable(value.numpy):  # tensorflow tensors
        return np.asarray(value.numpy())
    if hasattr(value, "__array__") and not isinstance(value, (list, tuple, str, bytes)):
        return np.asarray(value)
    return value


def _torch_int16() -> Any:
    import torch

    return torch.int16


def _normalize_value(key: str, raw: Any, where: str) -> Value:
    value: Any = to_numpy(raw)
    if isinstance(value, (list, tuple)):
        if not value:
            raise KnowledgeError(f"{where}: knowledge {key!r} is an empty list; expected samples")
        value = Ragged.from_list([to_numpy(v) for v in value])
    if isinstance(value, Ragged):
        dtype_name(value.dtype)
        rag: Ragged = value
        if not rag.values.flags.c_contiguous:
            rag = Ragged(np.ascontiguousarray(rag.values), rag.lengths)
        return rag
    if not isinstance(value, np.ndarray):
        raise KnowledgeError(
            f"{where}: knowledge {key!r} is a {type(value).__name__}; expected a numpy array "
            "(or a torch tensor, or a list of per-sample arrays for a variable-length field)"
        )
    if value.ndim == 0:
        raise KnowledgeError(
            f"{where}: knowledge {key!r} is a 0-d array; expected shape [batch, ...] "
            "(reshape a scalar per sample to [batch, 1])"
        )
    arr: np.ndarray = value
    dtype_name(arr.dtype)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def num_samples(value: Value) -> int:
    """Number of samples (first dimension) of a field."""
    return int(value.shape[0]) if isinstance(value, np.ndarray) else len(value)


def normalize_batch(
    batch: Mapping[str, Any], *, where: str = "knowledge batch"
) -> tuple[Knowledge, int]:
    """Validate a knowledge batch and convert its values; return it and its number of samples.

    Raises:
        KnowledgeError: not a dict of arrays, an unsupported dtype, a 0-d array, or fields
            whose first dimensions differ (the message names the keys and their sizes).
    """
    if not isinstance(batch, Mapping):
        raise KnowledgeError(
            f"{where}: expected a dict of name -> array, got {type(batch).__name__}"
        )
    if not batch:
        raise KnowledgeError(f"{where}: the knowledge batch is empty; expected at least one key")
    out: Knowledge = {}
    sizes: dict[str, int] = {}
    for key, value in batch.items():
        if not isinstance(key, str) or not key:
            raise KnowledgeError(f"{where}: knowledge names must be non-empty strings, got {key!r}")
        out[key] = _normalize_value(key, value, where)
        sizes[key] = num_samples(out[key])
    return out, common_batch_size(sizes, where)


def common_batch_size(
    sizes: Mapping[str, int], where: str, error: type[Exception] = KnowledgeError
) -> int:
    """The one batch size that every field of a batch shares (``sizes``: field -> samples).

    Raises:
        error (default :class:`KnowledgeError`): fields whose first dimensions differ, naming
            every field and its size; or no fields at all.
    """
    values = set(sizes.values())
    if len(values) == 1:
        return next(iter(values))
    if not values:
        raise error(f"{where}: the batch has no fields; expected at least one")
    listing = ", ".join(f"{k!r}: {n}" for k, n in sizes.items())
    raise error(f"{where}: all fields must share the first (batch) dimension, got {listing}")


def _field_desc(value: Value) -> FieldDesc:
    if isinstance(value, Ragged):
        return {
            "shape": [-1, -1, *value.inner_shape],
            "dtype": dtype_name(value.dtype),
            "lod_level": 1,
        }
    return {"shape": [-1, *value.shape[1:]], "dtype": dtype_name(value.dtype), "lod_level": 0}


def _check_field(where: str, key: Any, field: Any) -> FieldDesc:
    if not isinstance(key, str) or not key:
        raise KnowledgeError(f"{where}: knowledge names must be non-empty strings, got {key!r:.80}")
    if not isinstance(field, Mapping) or field.get("dtype") not in _DTYPES:
        raise KnowledgeError(
            f"{where}: knowledge {key!r} is described as {field!r:.200}; expected "
            '{"shape": [-1, ...], "dtype": <a known dtype>, "lod_level": 0 or 1}'
        )
    shape: Any = field.get("shape")
    lod = field.get("lod_level")
    if lod not in (0, 1) or isinstance(lod, bool):
        raise KnowledgeError(f"{where}: knowledge {key!r} has lod_level {lod!r}, expected 0 or 1")
    ok = isinstance(shape, list) and 1 + lod <= len(shape) <= 33
    ok = ok and all(type(d) is int and d == -1 for d in shape[: 1 + lod])
    inner = shape[1 + lod :] if ok else []
    if not ok or not all(type(d) is int and 0 <= d < 2**31 for d in inner):
        raise KnowledgeError(
            f"{where}: knowledge {key!r} has shape {shape!r:.200}; expected [-1, d1, ...] "
            "([-1, -1, d2, ...] when ragged) with dimensions >= 0"
        )
    return {"shape": list(shape), "dtype": field["dtype"], "lod_level": lod}


def check_desc(raw: Any, where: str) -> Description:
    """A description received from a peer or read from a file, checked field by field.

    Raises:
        KnowledgeError: not a non-empty map of name -> ``{"shape", "dtype", "lod_level"}``
            with a known dtype and a valid shape, naming the key and what was wrong.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise KnowledgeError(f"{where}: a description must be a non-empty map, got {raw!r:.200}")
    if len(raw) > 65536:
        raise KnowledgeError(f"{where}: a description of {len(raw)} keys is beyond any knowledge")
    return {key: _check_field(where, key, field) for key, field in raw.items()}


def describe(batch: Mapping[str, Value]) -> Description:
    """The description of a (normalized) knowledge batch, keys in the batch's order."""
    return {key: _field_desc(value) for key, value in batch.items()}


def check_batch(
    batch: Mapping[str, Value], desc: Description, *, where: str = "knowledge batch"
) -> None:
    """Check that a normalized batch matches ``desc`` (same keys, dtypes, trailing shapes, lod).

    Raises:
        KnowledgeError: naming the key, what was expected and what came.
    """
    if list(batch) != list(desc):
        missing = [k for k in desc if k not in batch]
        extra = [k for k in batch if k not in desc]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unexpected {extra}")
        if not detail:
            detail.append(f"keys in order {list(batch)}")
        raise KnowledgeError(
            f"{where}: keys differ from the first batch: expected {list(desc)}, got "
            f"{'; '.join(detail)}. Every batch must have the same keys"
        )
    for key, value in batch.items():
        got = _field_desc(value)
        want = desc[key]
        for attr in ("dtype", "lod_level", "shape"):
            if got[attr] != want[attr]:
                raise KnowledgeError(
                    f"{where}: knowledge {key!r} has {attr} {got[attr]!r}, expected "
                    f"{want[attr]!r} as in the first batch; every batch must keep the same "
                    "dtype and trailing shape"
                )


def slice_value(value: Value, start: int, stop: int) -> Value:
    """Samples ``start:stop`` of a field, as a view."""
    if isinstance(value, np.ndarray):
        return value[start:stop]
    return value.slice(start, stop)  # Ragged, or a sparse value such as SparseTopK


def concat_values(parts: Iterable[Value]) -> Value:
    """Concatenate fields sample-wise (one copy)."""
    seq = list(parts)
    if len(seq) == 1:
        return seq[0]
    if isinstance(seq[0], np.ndarray):
        return np.concatenate([p for p in seq if isinstance(p, np.ndarray)], axis=0)
    return type(seq[0]).concat(seq)  # type: ignore[arg-type]


class Chunk(NamedTuple):
    """A run of consecutive samples with their ids: the unit between a teacher and re-batching.

    Attributes:
        ids: int64 array ``[n]``, the samples' positions in the reader's order within a round.
        data: a normalized knowledge batch of ``n`` samples.
    """

    ids: np.ndarray
    data: Knowledge


FINGERPRINT_KEYS: tuple[str, ...] = ("fingerprint", "dataset_fingerprint")
"""What identifies knowledge beyond its description, as files, streams and students name it:
the teacher's fingerprint (what the program is) and the fingerprint of the data it read."""
MAX_FINGERPRINT = 1024
"""Characters a fingerprint may have at most."""


def check_fingerprint(name: str, value: Any) -> str | None:
    """``value`` if it is a usable fingerprint (a non-empty string of at most 1024 characters)
    or None.

    Raises:
        ConfigError: anything else, naming the argument.
    """
    if value is None or (isinstance(value, str) and 0 < len(value) <= MAX_FINGERPRINT):
        return value
    raise ConfigError(
        f"{name} must be a non-empty string of at most {MAX_FINGERPRINT} characters (or None), "
        f"got {type(value).__name__} {value!r:.100}"
    )
