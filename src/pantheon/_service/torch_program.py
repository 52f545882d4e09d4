"""A ``torch.nn.Module`` (or a TorchScript file) as a knowledge service program.

Imported only when a torch program is used (it imports ``torch``); the public name is
:class:`pantheon.torch.TorchProgram`.
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import ConfigError, missing_extra

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise missing_extra("torch", "torch", feature="a torch program") from _exc

from .._knowledge import BFLOAT16, Ragged, Value
from .fingerprint import file_fingerprint, state_dict_fingerprint

__all__ = ["TorchProgram", "to_tensor"]


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory (``torch.from_numpy``; bfloat16 via a view).

    A read-only array (e.g. memory-mapped from a knowledge file) is shared too, without
    torch's warning about it: do not write into the tensor.
    """
    if array.dtype == BFLOAT16:
        return to_tensor(array.view(np.int16)).view(torch.bfloat16)
    if not array.flags.writeable:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)
    return torch.from_numpy(array)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    default = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
    return (a.index if a.index is not None else default) == (
        b.index if b.index is not None else default
    )


def _module_device(module: torch.nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return None


class TorchProgram:
    """A ``torch.nn.Module`` as a knowledge service program, placed on each worker's device.

    The first worker on the device the module already lives on uses the module itself; every
    other worker gets ``copy.deepcopy(module).to(device)`` (the in-memory object is copied,
    nothing is serialised). The module is put in eval mode and called with the feeds as
    positional arguments in ``feed_list`` order, under ``torch.inference_mode()``. Inputs
    become tensors with ``torch.from_numpy`` (no copy) and are moved to the device (through
    pinned memory, ``non_blocking``, for CUDA). Outputs are converted to numpy by the service
    (bfloat16 through ``ml_dtypes``).

    Args:
        module: the teacher model.
        feed_list: the feed names, in the order of ``module.forward``'s arguments.
        num_threads: if set, each worker thread calls ``torch.set_num_threads(num_threads)``
            (process-wide) before its first batch; the service sets it to
            ``max(1, os.cpu_count() // n)`` when it runs ``n > 1`` CPU workers.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        feed_list: Sequence[str],
        *,
        num_threads: int | None = None,
        loader: Callable[[torch.device], torch.nn.Module] | None = None,
    ) -> None:
        self._module = module
        self._feed_list = list(feed_list)
        self._num_threads = num_threads
        self._loader = loader
        self._lock = threading.Lock()
        self._original_used = False
        self._file: str | None = None

    @classmethod
    def from_torchscript(
        cls,
        path: str | os.PathLike[str],
        feed_list: Sequence[str],
        *,
        num_threads: int | None = None,
    ) -> TorchProgram:
        """A TorchScript file, loaded with ``torch.jit.load(path, map_location=device)`` once per
        worker. Loading runs the code the file holds: load only files you trust."""
        file = os.fspath(path)

        def load(device: torch.device) -> torch.nn.Module:
            module: torch.nn.Module = torch.jit.load(file, map_location=device)  # type: ignore[no-untyped-call]
            return module

        program = cls(torch.nn.Identity(), feed_list, num_threads=num_threads, loader=load)
        program._file = file
        return program

    def fingerprint(self) -> str:
        """What this teacher is: ``"sha256:..."`` of the module's state dict (names, dtypes,
        shapes, values), or of the TorchScript file's bytes."""
        if self._file is not None:
            return file_fingerprint(self._file)
        return state_dict_fingerprint(self._module.state_dict())

    def module_for(self, device: torch.device) -> torch.nn.Module:
        """The module for one worker on ``device``: the original (first use on its own device)
        or a deep copy moved there."""
        if self._loader is not None:
            return self._loader(device)
        with self._lock:
            current = _module_device(self._module)
            if current is None or (not self._original_used and _same_device(current, device)):
                self._original_used = True
                return self._module
        return copy.deepcopy(self._module).to(device)

    def for_device(self, device: str) -> _ModuleRunner:
        """The runner of one worker on ``device`` (e.g. ``"cpu"``, ``"cuda:1"``)."""
        dev = torch.device(device)
        module = self.module_for(dev).eval()
        return _ModuleRunner(module, dev, self._feed_list, self._num_threads)


class _ModuleRunner:
    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device,
        feed_list: list[str],
        threads: int | None,
    ) -> None:
        self.module = module
        self.device = device
        self.feed_list = feed_list
        self.threads = threads

    def init_thread(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def _input(self, name: str, value: Value) -> torch.Tensor:
        if isinstance(value, Ragged):
            raise ConfigError(
                f"feed {name!r} is variable-length (Ragged); a torch.nn.Module program takes "
                "tensors: pad it in the reader, or use a program with for_device(device) "
                "(e.g. pantheon.hf.causal_lm_topk_program) that takes ragged feeds"
            )
        if value.dtype.kind not in "biufc" and value.dtype != BFLOAT16:
            raise ConfigError(
                f"feed {name!r} has dtype {value.dtype}, which torch cannot take; "
                "convert it in the reader (e.g. tokenize text) or use a plain callable program"
            )
        t = to_tensor(value)
        if self.device.type == "cpu":
            return t
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def __call__(self, feeds: Mapping[str, Value]) -> Any:
        with torch.inference_mode():
            args = [self._input(name, feeds[name]) for name in self.feed_list]
            return self.module(*args)
