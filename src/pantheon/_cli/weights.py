"""``--weights PATH``: a torch checkpoint loaded into the teacher module, without unpickling code.

The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: PyTorch's
restricted unpickler, which builds tensors and plain containers (dict, list, tuple, numbers,
strings) and refuses any other object, so a checkpoint cannot run code. It holds a state dict
(``torch.save(model.state_dict(), path)``) or a training checkpoint dict with the state dict
under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``; it is loaded with ``strict=True``
(every parameter and buffer must match by name and shape).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import ConfigError, missing_extra

__all__ = ["CHECKPOINT_KEYS", "load_weights"]

CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
"""Keys under which a training checkpoint dict may hold the model's state dict, tried in order."""


def _state_dict(obj: Any, path: Path, torch: Any) -> Mapping[str, Any]:
    """The state dict inside what ``torch.load`` returned."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                return _state_dict(inner, path, torch)
        keys = sorted(map(str, obj))[:10]
        raise ConfigError(
            f"{path} holds a dict without a state dict (its keys: {keys}); expected a state dict "
            f"(name -> tensor) or a checkpoint with one under {list(CHECKPOINT_KEYS)}: save it "
            "with torch.save(model.state_dict(), PATH)"
        )
    raise ConfigError(
        f"{path} holds a {type(obj).__name__}, not a state dict; save it with "
        "torch.save(model.state_dict(), PATH)"
    )


def load_weights(module: Any, path: str | Path) -> Any:
    """Load the checkpoint ``path`` into the ``torch.nn.Module`` ``module``; returns ``module``.

    Raises:
        ConfigError: ``module`` is not a torch module; the file is missing, unreadable, holds
            objects other than tensors and plain containers, or does not match the module.
        MissingDependencyError: torch is not installed (the ``torch`` extra).
    """
    try:
        import torch
    except ImportError as exc:
        raise missing_extra("torch", "torch", feature="--weights") from exc
    path = Path(path)
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(
            f"--weights loads a state dict into a torch.nn.Module, but the program is a "
            f"{type(module).__name__}; give PROGRAM as a torch.nn.Module class (built without "
            "arguments) or instance"
        )
    if not path.is_file():
        raise ConfigError(f"the checkpoint {str(path)!r} does not exist or is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" (it holds {found.group(1)})" if found else ""
        raise ConfigError(
            f"{path} holds objects other than tensors and plain containers{what}, which are "
            "never unpickled: a checkpoint can run code. Save the weights alone: "
            "torch.save(model.state_dict(), PATH)"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"cannot read the torch checkpoint {path}: {exc}") from None
    state = _state_dict(loaded, path, torch)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{path} does not fit {type(module).__name__}: {detail}") from None
    module.eval()
    return module
