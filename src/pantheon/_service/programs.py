"""Programs of the knowledge service: what a teacher runs on a batch of feeds, and where.

A ``program`` is one of

* a plain Python callable, called as ``program(**feeds)``; it is shared by all workers, so it
  must be thread-safe when ``exe`` names several;
* a ``torch.nn.Module`` (see :class:`pantheon.torch.TorchProgram`): called with the feeds as
  positional arguments in ``feed_list`` order, one copy per device;
* a path to an ``.onnx`` file (see :class:`pantheon.onnx.OnnxProgram`): one ONNX Runtime
  session per worker, inputs by feed name;
* a ``paddle.static.Program`` (see :class:`pantheon.paddle.PaddleProgram`): ``feed_list`` and
  ``schema`` may name its Variables themselves (:func:`adapt_program_args` turns them into
  names); one clone, scope and executor per worker;
* a ``paddle.nn.Layer`` (see :class:`pantheon.paddle.PaddleLayerProgram`): called like a torch
  module, with Paddle tensors, one copy per device;
* a path to a TorchScript file (``.pt``, ``.pth``, ``.ts``; loaded with ``torch.jit.load``,
  which runs the code the file holds: load only files you trust);
* any object with a ``for_device(device: str)`` method returning a callable
  ``fn(feeds: dict[str, ndarray | Ragged]) -> outputs``: the extension point that the torch,
  ONNX and Hugging Face adapters use (e.g. :func:`pantheon.hf.causal_lm_topk_program`);
* ``None`` when every ``schema`` source is a feed (the inputs are only passed through).

Outputs are named for ``schema``: a dict's keys; a single array or tensor is ``"output"``; a
tuple or list ``"output0"``, ``"output1"``, ... (a named tuple's field names work too).
A schema source is looked up among the outputs first, then among the feeds.

``exe`` says where programs run: ``None`` (one CPU worker), a device string (``"cpu"``,
``"cuda:0"``; Paddle's ``"gpu:0"``), a list of devices (one worker each), an int ``N``
(``N`` CPU workers), or Paddle's own: a place (``paddle.CUDAPlace(0)``) or an executor (as the
seed: every visible GPU for a CUDA executor, ``CPU_NUM`` CPU workers for a CPU one).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._errors import (
    ConfigError,
    KnowledgeError,
    WorkerError,
    error_text,
    missing_extra,
)
from .._knowledge import Knowledge, Value, normalize_batch, num_samples
from .._metrics import Histogram
from .._util import check_int

__all__ = [
    "Program",
    "Runner",
    "Worker",
    "adapt_program_args",
    "build_workers",
    "name_outputs",
    "parse_devices",
    "predict_batch",
    "validate_program",
    "validate_schema",
]

Runner = Callable[[dict[str, Value]], Any]
"""One worker's program on its device: ``feeds -> outputs`` (named by :func:`name_outputs`)."""


@runtime_checkable
class Program(Protocol):
    """What the service runs: a program placed on each worker's device.

    Torch modules, ONNX files and plain callables are wrapped into one; the Hugging Face
    adapter builds one directly. The runner it returns may have an ``init_thread()`` method,
    called once in each thread that runs it (thread settings).
    """

    def for_device(self, device: str) -> Runner:
        """The runner of one worker on ``device`` (``"cpu"``, ``"cuda:1"``, ...)."""
        ...


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|gpu(:\d+)?|mps|xpu(:\d+)?)$")
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


def parse_devices(exe: Any) -> list[str]:
    """The list of worker devices ``exe`` asks for (see the module docstring).

    Raises:
        ConfigError: an unknown device, an empty list, or a number of workers below 1.
    """
    if exe is None:
        return ["cpu"]
    if isinstance(exe, bool):
        raise ConfigError(f"exe must be None, a device, a list of devices or an int, got {exe!r}")
    if isinstance(exe, (int, np.integer)):
        return ["cpu"] * check_int("exe (a number of CPU workers)", exe, unit="workers")
    items = list(exe) if isinstance(exe, (list, tuple)) else [exe]
    if not items:
        raise ConfigError("exe is an empty list: give at least one device, e.g. ['cuda:0']")
    devices = []
    for item in items:
        if _is_paddle_object(item):
            from .paddle_program import paddle_devices

            found = paddle_devices(item)
            if found is not None:
                devices.extend(found)
                continue
        text = str(item)  # a torch.device prints as "cuda:0"
        if not _DEVICE.match(text):
            raise ConfigError(
                f"exe: unknown device {item!r}; expected 'cpu', 'cuda', 'cuda:N' (or 'gpu:N', "
                "'mps', 'xpu:N', a Paddle place or executor), a list of those, or a number of "
                "CPU workers"
            )
        devices.append(text)
    return devices


def _is_paddle_object(obj: Any) -> bool:
    """Whether ``obj`` comes from Paddle (checked without importing it)."""
    return sys.modules.get("paddle") is not None and type(obj).__module__.startswith("paddle")


def _is_paddle_layer(program: Any) -> bool:
    paddle = sys.modules.get("paddle")
    nn = getattr(paddle, "nn", None)
    return nn is not None and isinstance(program, nn.Layer)


def adapt_program_args(
    feed_list: Sequence[Any], schema: Mapping[str, Any], program: Any
) -> tuple[Sequence[Any], Mapping[str, Any], Any]:
    """``feed_list``, ``schema`` and ``program`` as the service takes them.

    A ``paddle.static.Program`` names its feeds and knowledge with Variables, as in the seed:
    they become names, and the program a :class:`pantheon.paddle.PaddleProgram` fetching
    them. Every other program is returned unchanged.

    Raises:
        ConfigError: Paddle Variables without the static program they belong to.
    """
    named = [*feed_list] if isinstance(feed_list, (list, tuple)) else []
    named += [*schema.values()] if isinstance(schema, Mapping) else []
    if not any(_is_paddle_object(v) for v in [program, *named]):
        return feed_list, schema, program
    from .paddle_program import adapt_static, is_graph_value, is_static_program

    if is_static_program(program):
        return adapt_static(feed_list, schema, program)
    if any(is_graph_value(v) for v in named):
        raise ConfigError(
            "feed_list or schema holds Paddle Variables, but program is a "
            f"{type(program).__name__}; give the paddle.static.Program they belong to"
        )
    return feed_list, schema, program


def validate_schema(feed_list: Sequence[str], schema: Any) -> None:
    """Check ``feed_list`` (unique non-empty names) and ``schema`` (name -> source name).

    Raises:
        ConfigError: naming what was expected and what came.
    """
    if isinstance(feed_list, (str, bytes)) or not isinstance(feed_list, Sequence):
        raise ConfigError(
            f"feed_list must be a list of input names, got {type(feed_list).__name__} {feed_list!r}"
        )
    if not all(isinstance(f, str) and f for f in feed_list):
        raise ConfigError(f"feed_list must hold non-empty strings, got {list(feed_list)!r}")
    if len(set(feed_list)) != len(feed_list):
        raise ConfigError(f"feed_list has duplicate names: {list(feed_list)!r}")
    if not isinstance(schema, Mapping) or not schema:
        raise ConfigError(
            "schema must be a non-empty dict {knowledge_name: source}, where source names an "
            f"output of the program or a feed; got {schema!r}"
        )
    for key, src in schema.items():
        if not isinstance(key, str) or not key or not isinstance(src, str) or not src:
            raise ConfigError(
                f"schema entries must map a knowledge name to a source name (both non-empty "
                f"strings), got {key!r}: {src!r}"
            )


def validate_program(program: Any, feed_list: Sequence[str], schema: Mapping[str, str]) -> None:
    """Check that ``program`` is one of the supported kinds (module docstring) without running it.

    Raises:
        ConfigError: an unsupported program, a missing model file, or ``None`` while the
            schema asks for outputs.
    """
    if program is None:
        outputs = [s for s in schema.values() if s not in feed_list]
        if outputs:
            raise ConfigError(
                f"program is None but the schema asks for {outputs}, which are not feeds "
                f"{list(feed_list)}; give the teacher model as program"
            )
        return
    if isinstance(program, (str, os.PathLike)):
        path = Path(program)
        suffix = path.suffix.lower()
        if suffix != ".onnx" and suffix not in _TORCHSCRIPT_SUFFIXES:
            raise ConfigError(
                f"program path {str(path)!r}: expected an .onnx file or a TorchScript file "
                f"({', '.join(_TORCHSCRIPT_SUFFIXES)})"
            )
        if not path.is_file():
            raise ConfigError(f"program path {str(path)!r} does not exist or is not a file")
        return
    if not callable(program) and not callable(getattr(program, "for_device", None)):
        raise ConfigError(
            f"program must be a callable, a torch.nn.Module, a paddle.nn.Layer or "
            f"paddle.static.Program, a path to an .onnx file or an object with "
            f"for_device(device); got {type(program).__name__}"
        )


@dataclass
class Worker:
    """One prediction worker: a program instance placed on one device.

    Attributes:
        name: how errors name it, e.g. ``"worker 1 (cuda:1)"``.
        device: the device string.
        run: ``feeds -> outputs`` (``None`` when the schema only passes feeds through).
        init_thread: called once in each thread that runs this worker (thread settings).
        timings: a histogram of the seconds each program call takes (the teacher's
            ``pantheon_teacher_predict_seconds``), or None.
    """

    name: str
    device: str
    run: Runner | None
    init_thread: Callable[[], None] | None = None
    timings: Histogram | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: set[int] = field(default_factory=set)  # threads that ran init_thread

    def prepare_thread(self) -> None:
        """Run ``init_thread`` in the calling thread unless it ran there already."""
        if self.init_thread is None:
            return
        me = threading.get_ident()
        if me not in self._threads:
            self.init_thread()
            self._threads.add(me)


def _cpu_threads(devices: Sequence[str]) -> int | None:
    n_cpu = sum(d == "cpu" for d in devices)
    if n_cpu <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // n_cpu)


def _is_torch_module(program: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(program, torch.nn.Module)


def _device_program(program: Any, feed_list: Sequence[str], threads: int | None) -> Program:
    """Wrap ``program`` into an object with ``for_device`` (or return it if it has one)."""
    if isinstance(program, Program):
        return program
    if _is_torch_module(program):
        from .torch_program import TorchProgram

        return TorchProgram(program, feed_list, num_threads=threads)
    if _is_paddle_layer(program):
        from .paddle_layer import PaddleLayerProgram

        return PaddleLayerProgram(program, feed_list)
    if isinstance(program, (str, os.PathLike)):
        if Path(program).suffix.lower() == ".onnx":
            try:
                from .onnx_program import OnnxProgram
            except ImportError as exc:
                raise missing_extra("onnxruntime", "onnx", feature="an .onnx program") from exc
            return OnnxProgram(program, intra_op_num_threads=threads)
        try:
            from .torch_program import TorchProgram
        except ImportError as exc:
            raise missing_extra("torch", "torch", feature="a TorchScript program") from exc
        return TorchProgram.from_torchscript(program, feed_list, num_threads=threads)
    return _CallableProgram(program)


class _CallableProgram:
    """A plain callable, shared by every worker: ``program(**feeds)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def for_device(self, device: str) -> Callable[[dict[str, Value]], Any]:
        fn = self._fn
        return lambda feeds: fn(**feeds)


def build_workers(program: Any, feed_list: Sequence[str], devices: Sequence[str]) -> list[Worker]:
    """One :class:`Worker` per device, each with its own program instance.

    With several CPU workers, a torch module or ONNX session gets
    ``max(1, os.cpu_count() // n_cpu_workers)`` intra-op threads, so workers do not
    oversubscribe the cores (for torch this is ``torch.set_num_threads``, a process-wide
    setting, called in each worker thread).
    """
    threads = _cpu_threads(devices)
    workers = []
    dp = None if program is None else _device_program(program, feed_list, threads)
    for i, device in enumerate(devices):
        name = f"worker {i} ({device})"
        if dp is None:
            workers.append(Worker(name, device, None))
            continue
        run = dp.for_device(device)
        init = getattr(run, "init_thread", None)
        workers.append(Worker(name, device, run, init if callable(init) else None))
    return workers


def name_outputs(out: Any) -> dict[str, Any]:
    """Name a program's outputs: a dict's keys; a tuple/list ``output0``, ``output1``, ...;
    a single value ``output``; ``None`` gives no outputs."""
    if out is None:
        return {}
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        named = {f"output{i}": v for i, v in enumerate(out)}
        for fname in getattr(out, "_fields", ()):  # a named tuple
            named.setdefault(fname, getattr(out, fname))
        return named
    return {"output": out}


def worker_error(exc: BaseException, worker: Worker, where: str | None) -> BaseException:
    """A worker's exception as the round raises it: ConfigError as it is, anything else as a
    :class:`~pantheon.WorkerError` naming the worker, its device and ``where`` (the batch;
    None: before its first batch), the original as ``__cause__``."""
    if isinstance(exc, ConfigError):
        return exc
    what = error_text(exc)
    err = WorkerError(
        f"knowledge service {worker.name} on device {worker.device!r} failed on "
        f"{where or 'before its first batch'}: {what}"
    )
    err.__cause__ = exc
    return err


def predict_batch(
    worker: Worker, schema: Mapping[str, str], feeds: dict[str, Value], n: int, where: str
) -> Knowledge:
    """Run ``worker`` on one batch and pick the knowledge that ``schema`` asks for.

    Raises:
        ConfigError: a schema source that is neither an output nor a feed (the message lists
            both); anything the program raises propagates unchanged.
        KnowledgeError: outputs that are not arrays or do not have ``n`` samples.
    """
    with worker.lock:
        if worker.run is None:
            out = None
        elif worker.timings is None:
            out = worker.run(feeds)
        else:
            t0 = time.perf_counter()
            out = worker.run(feeds)
            worker.timings.observe(time.perf_counter() - t0)
    outputs = name_outputs(out)
    knowledge: dict[str, Any] = {}
    for key, src in schema.items():
        if src in outputs:
            knowledge[key] = outputs[src]
        elif src in feeds:
            knowledge[key] = feeds[src]
        else:
            raise ConfigError(
                f"{where}: schema[{key!r}] = {src!r} is neither an output of the program nor a "
                f"feed; outputs: {sorted(outputs)}, feeds: {list(feeds)}"
            )
    data, got = normalize_batch(knowledge, where=where)
    if got != n:
        sizes = {k: num_samples(v) for k, v in data.items()}
        raise KnowledgeError(
            f"{where}: the knowledge has {got} samples but the input batch has {n} ({sizes}); "
            "every output must keep the batch dimension first"
        )
    return data
