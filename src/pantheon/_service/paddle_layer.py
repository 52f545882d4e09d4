"""A ``paddle.nn.Layer`` (dynamic graph) as a knowledge service program (public name:
:class:`pantheon.paddle.PaddleLayerProgram`).

Imported only when a Layer is used (it imports ``paddle``).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import ConfigError, missing_extra

try:
    import paddle
except ImportError as _exc:  # pragma: no cover - exercised only without paddle
    raise missing_extra("paddlepaddle", "paddle", feature="a paddle.nn.Layer program") from _exc

from .._knowledge import BFLOAT16, Ragged, Value
from .paddle_program import device_of_place, place_of

__all__ = ["PaddleLayerProgram"]


def _layer_device(layer: Any) -> str | None:
    for p in layer.parameters():
        return device_of_place(p.place)
    for b in layer.buffers():
        return device_of_place(b.place)
    return None


class PaddleLayerProgram:
    """A ``paddle.nn.Layer`` as a knowledge service program, placed on each worker's device.

    The first worker on the device the layer's parameters live on uses the layer itself;
    every other worker gets ``copy.deepcopy(layer)`` moved to its device. The layer is put in
    eval mode and called with the feeds as positional arguments in ``feed_list`` order, as
    Paddle tensors on the worker's device, under ``paddle.no_grad()``. Outputs (tensors, or
    tuples, lists and dicts of them) are converted to numpy by the service (bfloat16 through
    ``ml_dtypes``). Paddle must be in dynamic-graph mode (its default; not after
    ``paddle.enable_static()``).

    Args:
        layer: the teacher model.
        feed_list: the feed names, in the order of ``layer.forward``'s arguments.
    """

    def __init__(self, layer: Any, feed_list: Sequence[str]) -> None:
        if not isinstance(layer, paddle.nn.Layer):
            raise ConfigError(
                f"PaddleLayerProgram takes a paddle.nn.Layer, got {type(layer).__name__}"
            )
        self._layer = layer
        self._feed_list = list(feed_list)
        self._lock = threading.Lock()
        self._original_used = False

    def layer_for(self, device: str) -> Any:
        """The layer of one worker on ``device``: the original (first use on its own device)
        or a deep copy moved there."""
        with self._lock:
            current = _layer_device(self._layer)
            if current is None or (not self._original_used and current == device):
                self._original_used = True
                return self._layer
        layer = copy.deepcopy(self._layer)
        layer.to(device=place_of(device))
        return layer

    def for_device(self, device: str) -> _LayerRunner:
        """The runner of one worker on ``device`` (``"cpu"``, ``"gpu:1"``, ...)."""
        place = place_of(device)
        layer = self.layer_for(device)
        layer.eval()
        return _LayerRunner(layer, place, self._feed_list)


class _LayerRunner:
    def __init__(self, layer: Any, place: Any, feed_list: list[str]) -> None:
        self.layer = layer
        self.place = place
        self.feed_list = feed_list

    def _input(self, name: str, value: Value) -> Any:
        if isinstance(value, Ragged):
            raise ConfigError(
                f"feed {name!r} is variable-length (Ragged); a paddle.nn.Layer program takes "
                "tensors: pad it in the reader"
            )
        if value.dtype == BFLOAT16:
            t = paddle.to_tensor(value.astype(np.float32), place=self.place)
            return t.astype("bfloat16")
        if value.dtype.kind not in "biuf":
            raise ConfigError(
                f"feed {name!r} has dtype {value.dtype}, which Paddle cannot take; convert it "
                "in the reader"
            )
        return paddle.to_tensor(value, place=self.place)

    def __call__(self, feeds: Mapping[str, Value]) -> Any:
        if not paddle.in_dynamic_mode():
            raise ConfigError(
                "a paddle.nn.Layer program needs Paddle's dynamic-graph mode, but "
                "paddle.enable_static() is in effect: call paddle.disable_static() before "
                "start_knowledge_service, or give a paddle.static.Program"
            )
        with paddle.no_grad():
            args = [self._input(name, feeds[name]) for name in self.feed_list]
            return self.layer(*args)
