"""An ``.onnx`` model run by ONNX Runtime as a knowledge service program (public name:
:class:`pantheon.onnx.OnnxProgram`).

``Teacher.start_knowledge_service(program="model.onnx", ...)`` wraps the path in
:class:`OnnxProgram` automatically; build one yourself to choose providers or session options.
Needs ``onnxruntime`` (``pip install 'pantheon-kd[onnx]'``), imported when a session is made.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError, missing_extra
from .._knowledge import Ragged, Value
from .fingerprint import file_fingerprint

__all__ = ["OnnxProgram"]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise missing_extra("onnxruntime", "onnx", feature="an ONNX program") from exc
    return onnxruntime


class OnnxProgram:
    """An ONNX model run by ONNX Runtime: one ``InferenceSession`` per worker.

    Inputs are passed by feed name (every graph input must be a feed; feeds the graph does not
    take are ignored); outputs are named by the graph's output names. Providers follow the
    worker's device: ``"cuda:N"`` uses ``CUDAExecutionProvider`` with ``device_id=N`` (then the
    CPU provider for nodes CUDA lacks), ``"cpu"`` the CPU provider.

    Args:
        path: the ``.onnx`` file.
        intra_op_num_threads: threads per session (default: ONNX Runtime's choice; the
            service sets ``max(1, os.cpu_count() // n)`` for ``n > 1`` CPU workers).
        providers: explicit providers for every worker (overrides the per-device choice).
        session_options: an ``onnxruntime.SessionOptions`` used as given (then
            ``intra_op_num_threads`` is ignored).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        intra_op_num_threads: int | None = None,
        providers: Sequence[Any] | None = None,
        session_options: Any = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"ONNX program {str(self.path)!r} does not exist or is not a file")
        self._threads = intra_op_num_threads
        self._providers = list(providers) if providers is not None else None
        self._options = session_options

    def _providers_for(self, device: str) -> list[Any]:
        if self._providers is not None:
            return self._providers
        m = re.match(r"^cuda(?::(\d+))?$", device)
        if m is None:
            if device != "cpu":
                raise ConfigError(
                    f"ONNX program on device {device!r}: expected 'cpu' or 'cuda:N' (or pass "
                    "providers= to OnnxProgram)"
                )
            return ["CPUExecutionProvider"]
        available = _ort().get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                f"ONNX program on device {device!r}: this onnxruntime has no "
                f"CUDAExecutionProvider (available: {available}); install onnxruntime-gpu or "
                "run the ONNX teacher on 'cpu'"
            )
        return [
            ("CUDAExecutionProvider", {"device_id": int(m.group(1) or 0)}),
            "CPUExecutionProvider",
        ]

    def for_device(self, device: str) -> _OnnxRunner:
        """A runner with its own session for one worker on ``device``."""
        ort = _ort()
        options = self._options
        if options is None:
            options = ort.SessionOptions()
            if self._threads is not None:
                options.intra_op_num_threads = self._threads
        session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=self._providers_for(device)
        )
        return _OnnxRunner(session)

    def fingerprint(self) -> str:
        """What this teacher is: ``"sha256:..."`` of the ``.onnx`` file's bytes."""
        return file_fingerprint(self.path)

    def output_names(self) -> list[str]:
        """The graph's output names (opens a CPU session)."""
        return list(self.for_device("cpu").outputs)


class _OnnxRunner:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self, feeds: Mapping[str, Value]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ConfigError(
                f"the ONNX graph takes the inputs {self.inputs}, but {missing} are not feeds "
                f"(feeds: {list(feeds)}); name the reader's fields after the graph's inputs"
            )
        inputs: dict[str, np.ndarray] = {}
        for name in self.inputs:
            value = feeds[name]
            if isinstance(value, Ragged):
                raise ConfigError(
                    f"feed {name!r} is variable-length (Ragged); an ONNX graph takes padded "
                    "arrays: pad it in the reader"
                )
            inputs[name] = value
        results = self.session.run(self.outputs, inputs)
        return dict(zip(self.outputs, results, strict=True))
