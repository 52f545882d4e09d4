"""Service factories of the Ray tests: module-level, so that Ray workers import them."""

from __future__ import annotations

import os
import time

import numpy as np

SAMPLES = 1000  # samples of a same-order round
READER_BATCH = 16


def double(x: np.ndarray) -> dict[str, np.ndarray]:
    """The teacher: ``y = 2x``, and the id of the process that answered (a little slow, so
    that queries spread over replicas)."""
    time.sleep(0.002)
    return {"y": 2 * x, "pid": np.full((len(x), 1), os.getpid(), np.int64)}


def queries() -> dict:
    """Query mode: ``y = 2x`` of the student's own ``x``."""
    return {
        "feed_list": ["x"],
        "schema": {"y": "y", "pid": "pid"},
        "program": double,
        "reader_config": None,
    }


def reader():
    for i in range(SAMPLES):
        yield (np.array([i], np.int64),)


def rounds() -> dict:
    """Same-order: a reader of ``SAMPLES`` samples in batches of ``READER_BATCH`` (the last
    shorter), with ``x`` passed through."""
    return {
        "feed_list": ["x"],
        "schema": {"x": "x", "y": "y", "pid": "pid"},
        "program": double,
        "reader_config": {
            "sample_generator": reader,
            "batch_size": READER_BATCH,
            "drop_last": False,
        },
        "times": 2,
    }


def affine(x: np.ndarray) -> dict[str, np.ndarray]:
    """The generation teacher: ``3x + 1`` and ``x^2`` (float32)."""
    return {"a": 3 * x + 1, "b": x * x}
