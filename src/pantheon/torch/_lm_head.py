"""The teacher's ``lm_head`` side file as torch tensors (the format: ``docs/guide/llm.md``)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

from .._files import read_lm_head

__all__ = ["LMHead", "load_lm_head"]


class LMHead(NamedTuple):
    """A teacher's output projection: ``weight`` ``[V, d]`` and ``bias`` ``[V]`` or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def load_lm_head(
    path: str | os.PathLike[str], *, device: Any = None, dtype: torch.dtype | None = None
) -> LMHead:
    """Read an ``lm_head`` side file written by :func:`pantheon.hf.save_lm_head`.

    The file is read without unpickling anything (``numpy.load(allow_pickle=False)``).

    Args:
        path: the ``.npz`` side file.
        device: where the tensors go (default: the CPU).
        dtype: their dtype (default: as stored, float16 or float32).

    Raises:
        FileFormatError: not an ``lm_head`` side file.
    """
    weight, bias = read_lm_head(path)
    w = torch.from_numpy(weight).to(device=device, dtype=dtype)
    b = None if bias is None else torch.from_numpy(bias).to(device=device, dtype=dtype)
    return LMHead(w, b)
