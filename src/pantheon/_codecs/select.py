"""Selection of the k largest entries of each row of a (large-vocabulary) float array."""

from __future__ import annotations

import numpy as np

__all__ = ["topk_rows"]

_BLOCK = 32  # entries per group of the candidate filter
_CHUNK = 1 << 20  # entries per pass over the rows


def _select_simple(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row of a 2-D array (unsorted)."""
    vocab = x.shape[1]
    if k >= vocab:
        every: np.ndarray = np.broadcast_to(np.arange(vocab), x.shape).copy()
        return every
    part: np.ndarray = np.argpartition(x, vocab - k, axis=1)
    return part[:, vocab - k :]


def _select_filtered(x: np.ndarray, k: int) -> np.ndarray:
    """As :func:`_select_simple`, several times faster on large vocabularies: split each row
    into disjoint groups (strided, ``j, j + nb, j + 2 nb, ...``); the k-th largest of the
    groups' maxima bounds the row's k-th largest entry from below (k groups each hold an entry
    at least that large), so only the entries above it are candidates."""
    rows, vocab = x.shape
    bs = max(1, min(_BLOCK, vocab // k))
    nb = vocab // bs
    bmax = x[:, : nb * bs].reshape(rows, bs, nb).max(axis=1)
    if nb * bs < vocab:
        bmax = np.concatenate([bmax, x[:, nb * bs :].max(axis=1, keepdims=True)], axis=1)
    nblocks = bmax.shape[1]
    thresh = np.partition(bmax, nblocks - k, axis=1)[:, nblocks - k]
    flat = np.flatnonzero(x >= thresh[:, None])  # much faster than a 2-D nonzero
    r = flat // vocab
    c = flat - r * vocab
    counts = np.bincount(r, minlength=rows)
    width = int(counts.max()) if rows else 0
    if rows == 0 or counts.min() < k or width > vocab // 4:  # NaNs, -inf, many ties
        return _select_simple(x, k)
    starts = np.zeros(rows, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    pos = np.arange(len(r)) - starts[r]
    cand = np.full((rows, width), -np.inf, dtype=x.dtype)
    cand[r, pos] = x[r, c]
    cols = np.zeros((rows, width), dtype=np.int64)
    cols[r, pos] = c
    best = np.argpartition(cand, width - k, axis=1)[:, width - k :]
    return np.take_along_axis(cols, best, axis=1)


def topk_rows(
    x: np.ndarray, k: int, *, log_softmax: bool, temperature: float = 1.0, tail: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-k along the last axis of a float array, sorted decreasingly.

    The entries are ``y = x / temperature``; with ``log_softmax`` the values are
    ``y - logsumexp(y)`` over the row (computed in float32 or wider, before the cut).

    Returns:
        ``(values, indices, tail)``: values float32 (float64 for float64 input) and indices
        int64, ``[..., k]``; with ``tail``, the log-sum-exp of the entries outside the top-k
        in the values' units, ``[..., 1]`` (for log-probabilities ``log(1 - sum(exp(values)))``,
        computed from the full row without cancellation; ``-inf`` when nothing is left),
        else None.
    """
    vocab = x.shape[-1]
    flat = x.reshape(-1, vocab)
    wide = np.float32 if x.dtype.itemsize < 4 else x.dtype
    vals = np.empty((flat.shape[0], k), dtype=wide)
    idx = np.empty((flat.shape[0], k), dtype=np.int64)
    rest = np.empty((flat.shape[0], 1), dtype=wide) if tail else None
    step = max(1, _CHUNK // vocab)  # rows at a time, so that each pass stays in cache
    for start in range(0, flat.shape[0], step):
        rows = flat[start : start + step].astype(wide, copy=False)
        if temperature != 1.0:
            rows = rows / np.asarray(temperature, dtype=wide)
        sel = _select_filtered(rows, k) if vocab >= 8 * k else _select_simple(rows, k)
        v = np.take_along_axis(rows, sel, axis=1)
        if log_softmax or tail:
            top = np.max(rows, axis=1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0)
            e = np.exp(rows - top)
            total = np.sum(e, axis=1, keepdims=True)
            norm = top + np.log(total) if log_softmax else 0
            if log_softmax:
                v = v - norm
            if rest is not None:
                np.put_along_axis(e, sel, 0, axis=1)
                with np.errstate(divide="ignore"):
                    rest[start : start + step] = (
                        np.log(np.sum(e, axis=1, keepdims=True)) + top - norm
                    )
        order = np.argsort(-v, axis=1, kind="stable")
        vals[start : start + step] = np.take_along_axis(v, order, axis=1)
        idx[start : start + step] = np.take_along_axis(sel, order, axis=1)
    shape = (*x.shape[:-1], k)
    out_tail = None if rest is None else rest.reshape((*x.shape[:-1], 1))
    return vals.reshape(shape), idx.reshape(shape), out_tail
