"""PyTorch adapter: torch teachers for the knowledge service, a student-side dataset, KD losses.

Importing this module imports ``torch`` (``pip install 'pantheon-kd[torch]'``); the rest of
Pantheon never does unless a torch program is used.

* :class:`TorchProgram` runs a ``torch.nn.Module`` (or a TorchScript file) as a knowledge
  service program; ``Teacher.start_knowledge_service`` wraps a module in it automatically.
* :class:`KnowledgeDataset` wraps a student's knowledge generator as an ``IterableDataset``.
* Losses: :func:`soft_target_kl`, :func:`topk_kl`, :func:`feature_mse`.
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._errors import ConfigError

try:
    import torch
    from torch.utils.data import IterableDataset
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    from ._errors import missing_extra

    raise missing_extra("torch", "torch", feature="pantheon.torch") from _exc

from ._knowledge import BFLOAT16, Ragged, Value

__all__ = [
    "KnowledgeDataset",
    "TorchProgram",
    "feature_mse",
    "soft_target_kl",
    "to_tensor",
    "topk_kl",
]


# ---- numpy <-> torch ------------------------------------------------------------------------
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


# ---- programs -------------------------------------------------------------------------------
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

        return cls(torch.nn.Identity(), feed_list, num_threads=num_threads, loader=load)

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


# ---- student side ---------------------------------------------------------------------------
class KnowledgeDataset(IterableDataset[dict[str, Any]]):
    """A student's knowledge generator as a ``torch.utils.data.IterableDataset``.

    Each item is one knowledge batch as a dict of tensors, so use it with
    ``DataLoader(dataset, batch_size=None)`` (the student already batched). Arrays become
    tensors with ``torch.from_numpy`` (no copy); a :class:`~pantheon.Ragged` field becomes the
    pair ``(padded [n, max_len, ...], lengths [n] int64)``. Each ``iter()`` calls
    ``generator_factory()`` once (one round). Use ``num_workers`` 0 or 1: several loader
    workers would each read the same knowledge.

    Args:
        generator_factory: a reader creator, e.g. ``student.get_knowledge_generator(32)``.
        pin_memory: copy tensors into pinned memory when CUDA is available (default False).
        ragged_fill: the padding value of ragged fields (default 0).
    """

    def __init__(
        self,
        generator_factory: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        pin_memory: bool = False,
        ragged_fill: float = 0,
    ) -> None:
        if not callable(generator_factory):
            raise ConfigError(
                "KnowledgeDataset needs a reader creator (a callable returning an iterator of "
                f"dict batches), got {type(generator_factory).__name__}"
            )
        self._factory = generator_factory
        self._pin = bool(pin_memory) and torch.cuda.is_available()
        self._fill = ragged_fill

    def _convert(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            t = to_tensor(value)
            return t.pin_memory() if self._pin else t
        if isinstance(value, Ragged):
            padded, lengths = value.padded(self._fill)
            return (self._convert(padded), self._convert(lengths))
        if isinstance(value, torch.Tensor):
            return value.pin_memory() if self._pin and value.device.type == "cpu" else value
        return value

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError(
                f"KnowledgeDataset in a DataLoader with num_workers={info.num_workers}: each "
                "worker would read the same knowledge; use num_workers=0 or 1"
            )
        for batch in self._factory():
            yield {k: self._convert(v) for k, v in batch.items()}


# ---- losses ---------------------------------------------------------------------------------
_REDUCTIONS = ("batchmean", "mean", "sum", "none")


def _reduce(
    per_row: torch.Tensor, reduction: str, mask: torch.Tensor | None, n: int
) -> torch.Tensor:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    if mask is not None:
        m = mask.to(device=per_row.device, dtype=per_row.dtype)
        if m.shape != per_row.shape:
            raise ConfigError(
                f"mask has shape {list(mask.shape)}; expected the logits' shape without the "
                f"last (vocabulary) axis, {list(per_row.shape)}"
            )
        per_row = per_row * m
        count = m.sum()
    else:
        count = torch.tensor(float(per_row.numel()), device=per_row.device)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.sum() / count.clamp_min(1)
    return per_row.sum() / max(n, 1)


def _kl_rows(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``sum_j q_j (log q_j - log p_j)`` over the last axis, with ``0 log 0 = 0``."""
    q = log_q.exp()
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    return terms.sum(-1)


def _float(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Hinton's soft-target loss: ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    For each position (every index but the last axis, the classes or vocabulary):

    .. math:: \ell = T^2 \sum_j q_j (\log q_j - \log p_j),\quad
              q = \mathrm{softmax}(t / T),\ p = \mathrm{softmax}(s / T)

    with ``0 log 0 = 0`` (teacher logits of ``-inf``, e.g. densified top-k, are allowed). The
    ``T^2`` factor keeps gradient magnitudes independent of the temperature. Computed in at
    least float32.

    Args:
        student_logits: ``[n, ..., V]``.
        teacher_logits: the same shape (any float dtype; moved to the student's device).
        temperature: ``T`` (default 1.0).
        reduction: ``"batchmean"`` (sum / n, the default, as ``torch.nn.KLDivLoss``),
            ``"mean"`` (mean over positions, or over the positions ``mask`` keeps), ``"sum"``,
            ``"none"`` (per position, shape ``[n, ...]``).
        mask: optional ``[n, ...]`` (bool or 0/1) of the positions that count.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"soft_target_kl: student logits {list(student_logits.shape)} and teacher logits "
            f"{list(teacher_logits.shape)} must have the same shape"
        )
    s = _float(student_logits, student_logits)
    t = _float(teacher_logits, s)
    log_p = torch.log_softmax(s / temperature, dim=-1)
    log_q = torch.log_softmax(t / temperature, dim=-1)
    rows = _kl_rows(log_q, log_p) * (temperature * temperature)
    return _reduce(rows, reduction, mask, int(student_logits.shape[0]))


def topk_kl(
    student_logits: torch.Tensor,
    topk_values: torch.Tensor,
    topk_indices: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""KL distillation from sparse top-k teacher knowledge (values and their vocabulary indices).

    The teacher's distribution is renormalised over its ``k`` entries:
    ``q_j = exp(v_j / T) / sum_i exp(v_i / T)`` for the entries ``j`` in ``K = topk_indices``
    and 0 elsewhere (the same whether ``v`` are logits or log-probabilities, which differ by a
    constant per position; entries of ``-inf`` get ``q = 0``). The student's log-probabilities
    are normalised over the full vocabulary, ``log p = log_softmax(s / T)``, and gathered at
    ``K``. Per position:

    .. math:: \ell = T^2 \sum_{j \in K} q_j (\log q_j - \log p_j)

    which is exactly ``T^2 KL(q || p)`` since ``q`` is 0 outside ``K`` (so the student's mass
    outside the teacher's top-k is penalised through the normalisation of ``p``).

    Args:
        student_logits: ``[n, ..., V]``.
        topk_values: ``[n, ..., k]`` teacher logits or log-probabilities.
        topk_indices: ``[n, ..., k]`` integer indices into ``V``.
        temperature: ``T`` (default 1.0).
        reduction: as :func:`soft_target_kl`.
        mask: as :func:`soft_target_kl`.
    """
    if topk_values.shape != topk_indices.shape or (
        topk_values.shape[:-1] != student_logits.shape[:-1]
    ):
        raise ConfigError(
            f"topk_kl: expected topk_values and topk_indices of shape [..., k] matching the "
            f"student logits [..., V] = {list(student_logits.shape)} except the last axis; got "
            f"values {list(topk_values.shape)}, indices {list(topk_indices.shape)}"
        )
    s = _float(student_logits, student_logits)
    v = _float(topk_values, s)
    idx = topk_indices.to(device=s.device, dtype=torch.int64)
    log_p = torch.log_softmax(s / temperature, dim=-1).gather(-1, idx)
    log_q = torch.log_softmax(v / temperature, dim=-1)
    rows = _kl_rows(log_q, log_p) * (temperature * temperature)
    return _reduce(rows, reduction, mask, int(student_logits.shape[0]))


def feature_mse(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Feature distillation: ``mean((proj(s) - t)^2)`` over every element.

    Args:
        student_features: ``[n, ..., d_s]``.
        teacher_features: ``[n, ..., d_t]`` (moved to the student's device and dtype).
        projection: optional map of student features to the teacher's width (e.g. a trainable
            ``torch.nn.Linear(d_s, d_t)``); default none (the widths must match).
        reduction: ``"mean"`` (default), ``"sum"``, or ``"none"`` (elementwise).
    """
    s = projection(student_features) if projection is not None else student_features
    if s.shape != teacher_features.shape:
        raise ConfigError(
            f"feature_mse: (projected) student features {list(s.shape)} and teacher features "
            f"{list(teacher_features.shape)} must have the same shape; pass projection= to map "
            "the student's width to the teacher's"
        )
    sq = (s - teacher_features.to(device=s.device, dtype=s.dtype)) ** 2
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    if reduction == "none":
        return sq
    raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
