"""Toy teacher 1: knowledge x, 2x-1 and result = 2x-1 (the seed's toy)."""

from __future__ import annotations

import numpy as np
from _common import run_teacher, teacher_args


def program(x: np.ndarray) -> dict[str, np.ndarray]:
    y = 2 * x - 1
    return {"2x-1": y, "result": y.copy()}


if __name__ == "__main__":
    run_teacher(
        teacher_args("Toy teacher 1: y = 2x - 1"),
        program,
        schema={"x": "x", "2x-1": "2x-1", "result": "result"},
    )
