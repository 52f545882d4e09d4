"""Paddle teachers for the knowledge service: a ``paddle.static.Program`` (public name
:class:`pantheon.paddle.PaddleProgram`), Paddle places and executors as devices.

Imported only when Paddle objects are given (it imports ``paddle``); the dynamic-graph
program (``paddle.nn.Layer``) lives in :mod:`.paddle_layer`.

A static program runs as the seed ran it: the program's feed Variables are fed from the
reader (each feed reshaped to its declared shape and cast to its declared dtype, so the seed's
``sample_generator`` yielding ``[i]`` fills a ``[-1, 1]`` int64 feed), and the schema's
Variables are fetched. Each worker runs its own clone of the program with its own ``Scope``
and ``Executor``: Paddle executors and programs cannot be shared between threads. The
parameters are shared with the scope they were loaded into when the worker is on their
device, and copied to the worker's device otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import ConfigError, KnowledgeError, missing_extra

try:
    import paddle
except ImportError as _exc:  # pragma: no cover - exercised only without paddle
    raise missing_extra("paddlepaddle", "paddle", feature="a Paddle program") from _exc

from .._knowledge import BFLOAT16, Ragged, Value, to_dtype

__all__ = [
    "PaddleProgram",
    "adapt_static",
    "device_of_place",
    "fit_feed",
    "is_graph_value",
    "is_static_program",
    "numpy_dtype",
    "paddle_devices",
    "place_of",
]

_PLACE = re.compile(r"^Place\((cpu|gpu|xpu)(?::(\d+))?\)$")
_DEVICE = re.compile(r"^(cpu|gpu|cuda|xpu)(?::(\d+))?$")
_BUILD_LOCK = threading.Lock()
"""Held while an executor runs a program for the first time: Paddle builds the run plan
(adding fetch operations) at a process-wide insertion point, which two threads must not share."""


# -- devices -------------------------------------------------------------------------------


def device_of_place(place: Any) -> str:
    """The device string of a Paddle place: ``"cpu"``, ``"gpu:N"`` or ``"xpu:N"``.

    Raises:
        ConfigError: another kind of place (pinned memory, custom devices).
    """
    m = _PLACE.match(str(place))
    if m is None:
        raise ConfigError(
            f"exe: the Paddle place {place!s} is not supported; expected a CPUPlace, a "
            "CUDAPlace(N) or an XPUPlace(N)"
        )
    kind, index = m.groups()
    return "cpu" if kind == "cpu" else f"{kind}:{index or 0}"


def place_of(device: str) -> Any:
    """The Paddle place of a worker's device string (``"cpu"``, ``"gpu:N"``, ``"cuda:N"``,
    ``"xpu:N"``).

    Raises:
        ConfigError: an unknown device, or a GPU (XPU) device while this Paddle has no CUDA
            (XPU) support.
    """
    m = _DEVICE.match(device)
    if m is None:
        raise ConfigError(
            f"a Paddle program on device {device!r}: expected 'cpu', 'gpu:N' (or 'cuda:N') "
            "or 'xpu:N'"
        )
    kind, index = m.group(1), int(m.group(2) or 0)
    if kind == "cpu":
        return paddle.CPUPlace()
    if kind == "xpu":
        if not paddle.is_compiled_with_xpu():
            raise ConfigError(f"device {device!r}: this Paddle was built without XPU support")
        return paddle.XPUPlace(index)
    if not paddle.is_compiled_with_cuda():
        raise ConfigError(
            f"device {device!r}: this Paddle was built without CUDA (the CPU wheel); install "
            "paddlepaddle-gpu or run the teacher on 'cpu'"
        )
    return paddle.CUDAPlace(index)


def paddle_devices(obj: Any) -> list[str] | None:
    """The worker devices of a Paddle ``exe`` item, or None if ``obj`` is not one.

    A place is its one device. An ``Executor`` is read as the seed read it: a CUDA executor
    runs on every GPU of ``paddle.static.cuda_places()`` (``FLAGS_selected_gpus``, else
    ``CUDA_VISIBLE_DEVICES``), a CPU executor on ``CPU_NUM`` CPU workers (default 1).
    """
    if isinstance(obj, paddle.static.Executor):
        device = device_of_place(obj.place)
        if device.startswith("gpu"):
            return [device_of_place(p) for p in paddle.static.cuda_places()]
        if device == "cpu":
            workers = os.environ.get("CPU_NUM", "").strip() or "1"
            if not workers.isdigit() or int(workers) < 1:
                raise ConfigError(f"CPU_NUM must be a number of CPU workers >= 1, got {workers!r}")
            return ["cpu"] * int(workers)
        return [device]
    if type(obj).__name__.endswith("Place"):
        return [device_of_place(obj)]
    return None


# -- feeds and outputs ---------------------------------------------------------------------


def numpy_dtype(dtype: Any) -> np.dtype[Any] | None:
    """The numpy dtype of a Paddle dtype (``paddle.int64`` -> int64), None for the dtypes
    knowledge cannot hold (complex, ...)."""
    name = str(dtype).removeprefix("paddle.")
    try:
        return to_dtype(name)
    except KnowledgeError:
        return None


def fit_feed(
    name: str, value: Value, shape: Sequence[int] | None, dtype: np.dtype[Any] | None, where: str
) -> np.ndarray:
    """A feed reshaped to its declared ``shape`` (``-1``: any size) and cast to ``dtype``.

    The batch dimension is kept: a ``[B]`` feed declared ``[-1, 1]`` becomes ``[B, 1]``.
    Casting is done within a kind (int64 -> int32, float64 -> float32) or from int to float.

    Raises:
        ConfigError: a ragged feed, a cast across kinds (float -> int), or a shape that cannot
            be reshaped to the declared one.
    """
    if isinstance(value, Ragged):
        raise ConfigError(
            f"{where}: feed {name!r} is variable-length (Ragged); a Paddle program takes dense "
            "tensors: pad it in the reader"
        )
    arr = value
    if dtype is not None and arr.dtype != dtype:
        if not np.can_cast(arr.dtype, dtype, "same_kind") and arr.dtype != BFLOAT16:
            raise ConfigError(
                f"{where}: feed {name!r} has dtype {arr.dtype}, the program declares {dtype}; "
                "cast it in the reader"
            )
        arr = arr.astype(dtype)
    if shape is None or _shape_fits(arr.shape, shape):
        return arr
    dims = [int(d) for d in shape]
    n = arr.shape[0] if arr.ndim else 1
    target = [n, *dims[1:]]
    if dims[0] in (-1, n) and all(d >= 0 for d in dims[1:]) and arr.size == int(np.prod(target)):
        return arr.reshape(target)
    raise ConfigError(
        f"{where}: feed {name!r} has shape {list(arr.shape)}, which does not fit the "
        f"program's declared shape {dims} (-1: any size) with the batch dimension first"
    )


def _shape_fits(got: tuple[int, ...], declared: Sequence[int]) -> bool:
    return len(got) == len(declared) and all(
        int(d) < 0 or int(d) == g for g, d in zip(got, declared, strict=True)
    )


def to_paddle_feed(arr: np.ndarray) -> np.ndarray:
    """What an executor takes for ``arr``: bfloat16 as its uint16 bits (Paddle's convention)."""
    return arr.view(np.uint16) if arr.dtype == BFLOAT16 else arr


def from_paddle(arr: Any, dtype: np.dtype[Any] | None) -> Any:
    """A fetched array with the declared dtype restored (bfloat16 comes back as uint16 bits)."""
    if dtype == BFLOAT16 and isinstance(arr, np.ndarray) and arr.dtype == np.uint16:
        return arr.view(BFLOAT16)
    return arr


# -- static programs -----------------------------------------------------------------------


def is_static_program(obj: Any) -> bool:
    """Whether ``obj`` is a ``paddle.static.Program`` (PIR or the legacy program)."""
    return isinstance(obj, (paddle.pir.Program, paddle.base.framework.Program))


def is_graph_value(obj: Any) -> bool:
    """Whether ``obj`` is a variable of a static program (a PIR ``Value`` or a ``Variable``)."""
    return isinstance(obj, (paddle.pir.Value, paddle.base.framework.Variable))


def _is_pir(program: Any) -> bool:
    return isinstance(program, paddle.pir.Program)


def _data_inputs(program: Any) -> dict[str, tuple[list[int], np.dtype[Any] | None]]:
    """The program's feed variables: name -> (declared shape, numpy dtype)."""
    if _is_pir(program):
        inputs = {}
        for op in program.global_block().ops:
            if op.name() == "pd_op.data":
                value = op.result(0)
                inputs[str(op.attrs()["name"])] = (list(value.shape), numpy_dtype(value.dtype))
        return inputs
    return {
        v.name: (list(v.shape), numpy_dtype(v.dtype))
        for v in program.list_vars()
        if getattr(v, "is_data", False)
    }


def _value_name(value: Any) -> str | None:
    """The name of a program variable, None for a PIR value without one (an intermediate)."""
    try:
        return str(value.name)
    except ValueError:
        return None


def _named_value(program: Any, name: str) -> Any:
    """The variable of ``program`` called ``name``.

    Raises:
        ConfigError: no such variable (the message lists the named ones).
    """
    named: dict[str, Any] = {}
    for v in program.list_vars():
        n = _value_name(v)
        if n is not None:
            named.setdefault(n, v)
    if name in named:
        return named[name] if _is_pir(program) else name
    raise ConfigError(
        f"the Paddle program has no variable named {name!r}; named variables: "
        f"{sorted(named)[:20]}. Give the Variable itself in schema"
    )


def _feed_name(program: Any, feed: Any) -> str:
    if isinstance(feed, str):
        return feed
    if is_graph_value(feed):
        name = _value_name(feed)
        if name is not None:
            return name
    raise ConfigError(
        f"feed_list of a Paddle program holds feed Variables or their names, got {feed!r}"
    )


def _persistables(program: Any) -> list[str]:
    """Names of the program's persistable variables (its parameters and statistics)."""
    names = []
    for v in program.list_vars():
        if getattr(v, "persistable", False):
            name = _value_name(v)
            if name is not None and name not in ("feed", "fetch"):
                names.append(name)
    return names


class PaddleProgram:
    """A ``paddle.static.Program`` as a knowledge service program, one executor per worker.

    ``Teacher.start_knowledge_service`` builds one when ``program`` is a static program (the
    schema's Variables become the fetch targets); build one yourself to name the outputs or to
    give the scope of the parameters.

    Each worker runs a clone of ``program`` with its own ``Scope`` and
    ``paddle.static.Executor`` on its device. Parameters (every persistable variable) are
    taken from ``scope``: shared when the worker is on their device, copied otherwise. The
    runner feeds the program's feed variables, each reshaped to its declared shape and cast to
    its declared dtype, and returns the fetched arrays by output name plus the fitted feeds by
    feed name (so a feed passed through as knowledge has the program's shape).

    Args:
        program: the inference program (built for prediction, or from
            ``paddle.static.load_inference_model``); PIR and legacy programs alike.
        feed_list: the reader's inputs, as data Variables or their names. Every feed variable
            of the program must be in it; names that are not feeds of the program are passed
            through untouched.
        fetch: output name -> the Variable to fetch (or the name of a named one).
        scope: where the parameters are (default: ``paddle.static.global_scope()`` at
            construction, where ``exe.run(startup)`` puts them).

    Raises:
        ConfigError: a feed variable missing from ``feed_list``, an unknown variable name,
            or an output named like a feed.
    """

    def __init__(
        self,
        program: Any,
        feed_list: Sequence[Any],
        fetch: Mapping[str, Any],
        *,
        scope: Any = None,
    ) -> None:
        if not is_static_program(program):
            raise ConfigError(
                f"PaddleProgram takes a paddle.static.Program, got {type(program).__name__}"
            )
        self._program = program
        self._inputs = _data_inputs(program)
        names = [_feed_name(program, f) for f in feed_list]
        missing = [n for n in self._inputs if n not in names]
        if missing:
            raise ConfigError(
                f"the Paddle program's feed variables {missing} are not in feed_list {names}; "
                "every feed of the program must be read from the reader"
            )
        self._feeds = [n for n in names if n in self._inputs]
        self._fetch = {
            str(k): (v if is_graph_value(v) else _named_value(program, str(v)))
            for k, v in fetch.items()
        }
        clash = sorted(set(self._fetch) & set(self._feeds))
        if clash:
            raise ConfigError(f"PaddleProgram: outputs {clash} are named like feeds; rename them")
        self._dtypes = [
            numpy_dtype(v.dtype) if is_graph_value(v) else None for v in self._fetch.values()
        ]
        self._scope = scope if scope is not None else paddle.static.global_scope()
        self._persistables = _persistables(program)

    @property
    def output_names(self) -> list[str]:
        """The names the runner's outputs have: the fetch names, then the fed feeds."""
        return [*self._fetch, *self._feeds]

    def _clone(self) -> tuple[Any, list[Any]]:
        """A clone of the program and the fetch targets in it."""
        if not _is_pir(self._program):
            clone = self._program.clone(for_test=True)
            return clone, [v if isinstance(v, str) else v.name for v in self._fetch.values()]
        mapping = paddle.pir.IrMapping()
        clone = self._program.clone(mapping)
        targets = []
        for name, value in self._fetch.items():
            try:
                targets.append(mapping.look_up(value))
            except (RuntimeError, ValueError, IndexError) as exc:
                raise ConfigError(
                    f"schema / fetch {name!r}: {value} is not a variable of this program "
                    "(was it built under another program_guard?)"
                ) from exc
        return clone, targets

    def _worker_scope(self, place: Any, device: str) -> Any:
        scope = paddle.static.Scope()
        for name in self._persistables:
            var = self._scope.find_var(name)
            src = var.get_tensor() if var is not None else None
            if src is None or not src._is_initialized():
                raise ConfigError(
                    f"the Paddle program's parameter {name!r} has no value in the scope: run "
                    "the startup program (exe.run(startup)) or load the model before "
                    "start_knowledge_service, or give PaddleProgram(..., scope=) the scope "
                    "that holds it"
                )
            dst = scope.var(name).get_tensor()
            if device_of_place(src._place()) == device:
                dst._share_data_with(src)
            else:
                dst._copy_from(src, place)
        return scope

    def for_device(self, device: str) -> _StaticRunner:
        """The runner of one worker on ``device`` (``"cpu"``, ``"gpu:1"``, ...)."""
        place = place_of(device)
        with _BUILD_LOCK:
            clone, targets = self._clone()
        scope = self._worker_scope(place, device)
        exe = paddle.static.Executor(place)
        return _StaticRunner(
            clone, exe, scope, self._inputs, self._feeds, list(self._fetch), targets, self._dtypes
        )


class _StaticRunner:
    """One worker's program, scope and executor."""

    def __init__(
        self,
        program: Any,
        exe: Any,
        scope: Any,
        inputs: Mapping[str, tuple[list[int], np.dtype[Any] | None]],
        feeds: list[str],
        names: list[str],
        targets: list[Any],
        dtypes: list[np.dtype[Any] | None],
    ) -> None:
        self.program = program
        self.exe = exe
        self.scope = scope
        self.inputs = dict(inputs)
        self.feeds = feeds
        self.names = names
        self.targets = targets
        self.dtypes = dtypes
        self._warm = False

    def __call__(self, feeds: Mapping[str, Value]) -> dict[str, Any]:
        fitted = {n: fit_feed(n, feeds[n], *self.inputs[n], "Paddle program") for n in self.feeds}
        feed = {n: to_paddle_feed(a) for n, a in fitted.items()}
        lock = contextlib.nullcontext() if self._warm else _BUILD_LOCK
        with lock:
            results = self.exe.run(
                self.program, feed=feed, fetch_list=self.targets, scope=self.scope
            )
        self._warm = True
        out: dict[str, Any] = dict(fitted)
        for name, result, dtype in zip(self.names, results, self.dtypes, strict=True):
            out[name] = from_paddle(result, dtype)
        return out


def adapt_static(
    feed_list: Sequence[Any], schema: Mapping[str, Any], program: Any
) -> tuple[list[str], dict[str, str], PaddleProgram]:
    """The service's arguments for a static program: feed names, ``schema`` as names, and the
    program wrapped in :class:`PaddleProgram`.

    A schema entry that is a feed (its Variable or its name) passes the fitted feed through;
    any other Variable (or variable name) is fetched, under its knowledge name.

    Raises:
        ConfigError: see :class:`PaddleProgram`.
    """
    feeds = [_feed_name(program, f) for f in feed_list]
    sources: dict[str, str] = {}
    fetch: dict[str, Any] = {}
    for key, src in schema.items():
        name = src if isinstance(src, str) else _value_name(src) if is_graph_value(src) else None
        if name is not None and name in feeds and (isinstance(src, str) or _is_data(src)):
            sources[key] = name
            continue
        if not isinstance(src, str) and not is_graph_value(src):
            raise ConfigError(
                f"schema[{key!r}] of a Paddle program must be a Variable of the program or a "
                f"variable name, got {type(src).__name__}"
            )
        out = key if key not in feeds else f"{key} (fetched)"
        fetch[out] = src
        sources[key] = out
    return feeds, sources, PaddleProgram(program, feeds, fetch)


def _is_data(value: Any) -> bool:
    if isinstance(value, paddle.pir.Value):
        return bool(value.get_defining_op().name() == "pd_op.data")
    return bool(getattr(value, "is_data", False))
