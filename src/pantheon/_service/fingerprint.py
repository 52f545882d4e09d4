"""Teacher fingerprints: a short string that says what a teacher program is.

A fingerprint travels with the knowledge (``pantheon.fingerprint`` in a file's metadata, the
DESC message online) so that a student can tell when the teacher behind a teacher id is no
longer the one it trained with. :func:`fingerprint_of` derives one from the program:

* a ``torch.nn.Module`` (anything with ``state_dict()``): the SHA-256 of its state dict, every
  entry's name, dtype, shape and bytes, in name order (read once: seconds for a large model;
  give ``Teacher(fingerprint="...")`` to skip it);
* an ``.onnx`` or TorchScript file: the SHA-256 of its bytes;
* a program object with a ``fingerprint()`` method (:class:`~pantheon.torch.TorchProgram`,
  :class:`~pantheon.onnx.OnnxProgram`, the Hugging Face programs): what it returns;
* anything else (a plain callable): no fingerprint.

Nothing here imports torch: tensors are read through :func:`~pantheon._knowledge.to_numpy`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError
from .._knowledge import check_fingerprint, to_numpy

__all__ = ["file_fingerprint", "fingerprint_of", "state_dict_fingerprint"]

_BLOCK = 1 << 20  # bytes hashed at a time


def _digest(h: Any) -> str:
    return f"sha256:{h.hexdigest()}"


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` of a file's bytes.

    Raises:
        ConfigError: the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
    except OSError as exc:
        raise ConfigError(f"cannot read {os.fspath(path)!r} to fingerprint it: {exc}") from None
    return _digest(h)


def state_dict_fingerprint(state: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a state dict: each entry's name, dtype, shape and bytes, in name
    order. Tensors are read as numpy arrays (moved to the CPU); other entries by ``repr``."""
    h = hashlib.sha256()
    for name in sorted(state):
        try:
            value = to_numpy(state[name])
        except (TypeError, RuntimeError):  # e.g. quantized tensors, which numpy cannot hold
            value = state[name]
        h.update(name.encode("utf-8") + b"\0")
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            h.update(f"{arr.dtype.name}{list(arr.shape)}\0".encode())
            h.update(arr.reshape(-1).view(np.uint8).data)
        else:
            h.update(repr(value).encode("utf-8") + b"\0")
    return _digest(h)


def fingerprint_of(program: Any) -> str | None:
    """The fingerprint of a teacher program (see the module docstring), or None.

    Raises:
        ConfigError: a program whose own ``fingerprint()`` returns something that is not a
            usable fingerprint, or a model file that cannot be read.
    """
    if program is None:
        return None
    if isinstance(program, (str, os.PathLike)):
        return file_fingerprint(program) if Path(program).is_file() else None
    method = getattr(program, "fingerprint", None)
    if callable(method):
        return check_fingerprint(f"{type(program).__name__}.fingerprint()", method())
    state_dict = getattr(program, "state_dict", None)
    if callable(state_dict):
        return state_dict_fingerprint(state_dict())
    return None
