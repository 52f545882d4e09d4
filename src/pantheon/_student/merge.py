"""Merging the knowledge of several teachers.

The merged description lists the first teacher's keys in order, then the keys that later
teachers add. A key held by one teacher is passed through untouched. A key held by several
teachers needs a strategy in ``merge_strategy``:

* ``"sum"``, ``"mean"`` (the seed's), ``"max"``, ``"min"``: element-wise over the teachers;
* ``("mean", [w0, w1, ...])`` or ``{"weighted_mean": [w0, ...]}``: the weighted mean
  ``sum_i w_i x_i / sum_i w_i``, one weight per teacher holding the key, in registration order;
* a callable ``f(values: list[np.ndarray]) -> np.ndarray``, called with the teachers' arrays in
  registration order.

Arithmetic runs in float64 for integer fields and in the field's dtype (float32 at least) for
float fields; the result is cast back to the description's dtype (integers rounded to nearest).
Variable-length (``lod_level`` 1) fields merge their values when every teacher has the same lengths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import MergeError
from .._knowledge import Description, Knowledge, Ragged, Value, to_dtype

__all__ = ["MergePlan", "build_plan", "merge_batches"]

log = logging.getLogger("pantheon")

_ELEMENTWISE = {"sum", "mean", "max", "min"}
Strategy = Callable[[list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class _KeyPlan:
    key: str
    teachers: tuple[int, ...]  # positions (registration order) of the teachers that hold the key
    reduce: Strategy | None  # None: pass the only teacher's value through
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class MergePlan:
    """How to merge one batch of every teacher into the student's batch."""

    desc: Description
    keys: tuple[_KeyPlan, ...]

    @property
    def keys_need_merge(self) -> bool:
        """Whether any key is computed from several teachers."""
        return any(k.reduce is not None for k in self.keys)


def _weighted(weights: Sequence[float]) -> Strategy:
    w = np.asarray(weights, dtype=np.float64)

    def reduce(values: list[np.ndarray]) -> np.ndarray:
        acc = values[0] * w[0]
        for wi, v in zip(w[1:], values[1:], strict=True):
            acc = acc + v * wi
        return np.asarray(acc / w.sum())

    return reduce


def _elementwise(name: str) -> Strategy:
    def reduce(values: list[np.ndarray]) -> np.ndarray:
        if name == "max":
            return np.asarray(np.maximum.reduce(values))
        if name == "min":
            return np.asarray(np.minimum.reduce(values))
        acc = values[0].copy()
        for v in values[1:]:
            acc += v
        if name == "mean":
            acc /= len(values)
        return np.asarray(acc)

    return reduce


def _strategy(key: str, spec: Any, holders: Sequence[str]) -> Strategy:
    """Turn one ``merge_strategy`` entry into a reduce function, validating it."""
    if callable(spec):
        return spec  # type: ignore[no-any-return]
    if isinstance(spec, str):
        if spec not in _ELEMENTWISE:
            raise MergeError(
                f"unknown merge strategy {spec!r} for key {key!r}: expected one of "
                f"{sorted(_ELEMENTWISE)}, ('mean', [weights]) or a callable"
            )
        return _elementwise(spec)
    weights: Any = None
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and spec[0] == "mean":
        weights = spec[1]
    elif isinstance(spec, Mapping) and set(spec) == {"weighted_mean"}:
        weights = spec["weighted_mean"]
    if weights is None:
        raise MergeError(
            f"cannot read merge strategy {spec!r} for key {key!r}: expected 'sum', 'mean', 'max', "
            "'min', ('mean', [w0, w1, ...]), {'weighted_mean': [...]} or a callable"
        )
    ws = [float(w) for w in weights]
    if len(ws) != len(holders):
        raise MergeError(
            f"merge strategy for key {key!r} has {len(ws)} weights but {len(holders)} teachers "
            f"hold the key ({', '.join(holders)}): give one weight per teacher, in registration order"
        )
    if sum(ws) == 0 or any(w < 0 for w in ws):
        raise MergeError(f"weights for key {key!r} must be >= 0 and not all zero, got {ws}")
    return _weighted(ws)


def build_plan(
    descs: Sequence[Description],
    names: Sequence[str],
    merge_strategy: Mapping[str, Any] | None,
) -> MergePlan:
    """Merge the teachers' descriptions and check the strategies against them.

    Args:
        descs: one description per teacher, in registration order.
        names: the teachers' names for messages (e.g. ``"teacher 0 (a.arrow)"``).
        merge_strategy: key -> strategy (see the module docstring).

    Raises:
        MergeError: a key shared without a strategy, with different shapes/dtypes across
            teachers, an unknown strategy, or weights that do not fit.
    """
    strategies = dict(merge_strategy or {})
    holders: dict[str, list[int]] = {}
    merged: Description = {}
    for t, desc in enumerate(descs):
        for key, field in desc.items():
            if key in merged:
                if field != merged[key]:
                    first = names[holders[key][0]]
                    raise MergeError(
                        f"key {key!r} is {field} in {names[t]} but {merged[key]} in {first}: "
                        "shared keys must have the same shape, dtype and lod_level"
                    )
            else:
                merged[key] = dict(field)
            holders.setdefault(key, []).append(t)
    plans = []
    for key, field in merged.items():
        who = holders[key]
        if len(who) == 1:
            plans.append(_KeyPlan(key, tuple(who), None, to_dtype(field["dtype"])))
            continue
        if key not in strategies:
            raise MergeError(
                f"key {key!r} is produced by {len(who)} teachers ({', '.join(names[t] for t in who)}) "
                f"but merge_strategy has no entry for it: pass e.g. "
                f"Student(merge_strategy={{{key!r}: 'sum'}}) ('sum', 'mean', 'max', 'min', weights, callable)"
            )
        reduce = _strategy(key, strategies[key], [names[t] for t in who])
        plans.append(_KeyPlan(key, tuple(who), reduce, to_dtype(field["dtype"])))
    unknown = [k for k in strategies if k not in merged]
    for key in unknown:  # validate the spelling at least, even if no teacher has the key (yet)
        _strategy(key, strategies[key], ["?"] * _weights_len(strategies[key]))
    log.info("knowledge merging strategy: %s", strategies)
    log.info("knowledge description after merging: %s", merged)
    return MergePlan(merged, tuple(plans))


def _weights_len(spec: Any) -> int:
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return len(spec[1])
    if isinstance(spec, Mapping) and "weighted_mean" in spec:
        return len(spec["weighted_mean"])
    return 0


def _work_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind == "f" and dtype.itemsize >= 4:
        return dtype
    return np.dtype(np.float64) if dtype.kind in "iub" else np.dtype(np.float32)


def _cast_back(result: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if result.dtype == dtype:
        return result
    if dtype.kind in "iu":
        result = np.rint(result)
    return result.astype(dtype)


def _reduce(plan: _KeyPlan, values: list[Value], names: Sequence[str]) -> Value:
    assert plan.reduce is not None
    if not isinstance(values[0], (np.ndarray, Ragged)):
        raise MergeError(
            f"key {plan.key!r} holds {type(values[0]).__name__} values, which cannot be merged "
            "across teachers; read it densely (Student(sparse_topk=False)) to merge it"
        )
    if isinstance(values[0], Ragged):
        rag = [v for v in values if isinstance(v, Ragged)]
        for t, r in zip(plan.teachers[1:], rag[1:], strict=True):
            if not np.array_equal(r.lengths, rag[0].lengths):
                raise MergeError(
                    f"cannot merge variable-length key {plan.key!r}: {names[t]} has sequence lengths "
                    f"that differ from {names[plan.teachers[0]]}'s for the same samples"
                )
        merged = _reduce_arrays(plan, [r.values for r in rag])
        return Ragged(merged, rag[0].lengths)
    return _reduce_arrays(plan, [v for v in values if isinstance(v, np.ndarray)])


def _reduce_arrays(plan: _KeyPlan, arrays: list[np.ndarray]) -> np.ndarray:
    assert plan.reduce is not None
    work = _work_dtype(plan.dtype)
    result = plan.reduce([a.astype(work, copy=False) for a in arrays])
    result = np.asarray(result)
    if result.shape != arrays[0].shape:
        raise MergeError(
            f"merge strategy for key {plan.key!r} returned shape {list(result.shape)}, expected "
            f"{list(arrays[0].shape)} (the teachers' shape)"
        )
    return _cast_back(result, plan.dtype)


def merge_batches(plan: MergePlan, batches: Sequence[Knowledge], names: Sequence[str]) -> Knowledge:
    """Merge one aligned batch of every teacher (same samples, registration order) by ``plan``."""
    out: Knowledge = {}
    for kp in plan.keys:
        if kp.reduce is None:
            out[kp.key] = batches[kp.teachers[0]][kp.key]
        else:
            out[kp.key] = _reduce(kp, [batches[t][kp.key] for t in kp.teachers], names)
    return out
