"""The ``lm_head`` side file: a teacher's output projection, shipped once beside hidden-state
knowledge so that the student can recompute the teacher's logits (``docs/guide/llm.md``).

The file is a numpy ``.npz`` archive (uncompressed, written with ``numpy.savez``) holding
``weight``, ``[V, d]`` float16 or float32, and optionally ``bias``, ``[V]`` in the same dtype.
It is read with ``allow_pickle=False``: an archive holding objects, other arrays, or arrays of
other shapes or dtypes is refused.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from .._errors import ConfigError, FileFormatError

__all__ = ["LM_HEAD_DTYPES", "read_lm_head", "write_lm_head"]

LM_HEAD_DTYPES = ("float16", "float32")


def _check(weight: np.ndarray, bias: np.ndarray | None, where: str, error: type[Exception]) -> None:
    if weight.ndim != 2 or weight.dtype.name not in LM_HEAD_DTYPES or 0 in weight.shape:
        raise error(
            f"{where}: the lm_head weight must be a non-empty [V, d] array of "
            f"{' or '.join(LM_HEAD_DTYPES)}, got shape {list(weight.shape)} {weight.dtype}"
        )
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise error(
            f"{where}: the lm_head bias must be [{weight.shape[0]}] {weight.dtype} like the "
            f"weight, got shape {list(bias.shape)} {bias.dtype}"
        )


def write_lm_head(
    path: str | os.PathLike[str], weight: np.ndarray, bias: np.ndarray | None = None
) -> None:
    """Write the side file (module docstring) at ``path`` (``.npz`` is not appended).

    Raises:
        ConfigError: a weight that is not ``[V, d]`` float16/float32, or a bias not ``[V]``.
    """
    _check(weight, bias, f"lm_head file {os.fspath(path)!r}", ConfigError)
    arrays: dict[str, Any] = {"weight": np.ascontiguousarray(weight)}
    if bias is not None:
        arrays["bias"] = np.ascontiguousarray(bias)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def read_lm_head(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(weight, bias or None)`` from a side file written by :func:`write_lm_head`.

    Raises:
        FileFormatError: not such a file (not an ``.npz`` archive, objects, other arrays,
            other shapes or dtypes).
    """
    where = f"lm_head file {os.fspath(path)!r}"
    try:
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise FileFormatError(f"{where}: expected an .npz archive, found a single array")
            with loaded as archive:
                names = set(archive.files)
                if "weight" not in names or names - {"weight", "bias"}:
                    raise FileFormatError(
                        f"{where}: expected the arrays 'weight' (and optionally 'bias'), found "
                        f"{sorted(names)}"
                    )
                weight = archive["weight"]
                bias = archive["bias"] if "bias" in names else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, FileFormatError):
            raise
        raise FileFormatError(
            f"{where}: not a readable lm_head file (an .npz of 'weight' [V, d]): {exc}"
        ) from exc
    _check(weight, bias, where, FileFormatError)
    return weight, bias
