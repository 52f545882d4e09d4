"""How long a real training loop waits for online knowledge.

A knowledge service (``start_knowledge_service``, inputs passed through with a cheap teacher
output) runs in a child process; this process is a PyTorch student: a small MLP trained on
CPU with one thread, each step (forward, KD + CE loss, backward, Adam) taking about
``--step-ms`` milliseconds (the hidden width is calibrated to it before the run). The student
reads ``--steps`` batches through ``Student.get_knowledge_generator`` and the table shows,
for each transport, the share of the loop's wall time spent waiting for knowledge
(``Student.stats()["wait_seconds"]``), median of ``--repeats`` interleaved runs. The teacher
is faster than the student, so the target is a wait below 2 %.

    python benchmarks/wait.py --steps 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

# one BLAS thread per process: the teacher's matmul and the student's step share 2 cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import finish, free_port, median, spawn, table

BATCH = 64
FEATURES = 256
CLASSES = 100


def _teacher(port: int, steps: int) -> None:
    from pantheon import Teacher

    rng = np.random.default_rng(0)
    x = rng.random((BATCH, FEATURES), dtype=np.float32)
    y = rng.integers(0, CLASSES, BATCH).astype(np.int64)
    w = rng.random((FEATURES, CLASSES), dtype=np.float32)

    def batches() -> Any:
        for _ in range(steps + 1):
            yield (x, y)

    def teacher(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": x @ w}  # a teacher much faster than the student

    with Teacher(out_port=port, timeout=120) as t:
        t.start_knowledge_service(
            feed_list=["x", "y"],
            schema={"x": "x", "y": "y", "logits": "logits"},
            program=teacher,
            reader_config={"batch_generator": batches},
        )


def _model(hidden: int) -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, CLASSES),
    )


def _step(model: Any, opt: Any, batch: dict[str, Any]) -> None:
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(batch["x"])
    out = model(x)
    t = torch.as_tensor(batch["logits"])
    kd = F.kl_div(
        F.log_softmax(out, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"
    )
    loss = kd + F.cross_entropy(out, torch.as_tensor(batch["y"]))
    opt.zero_grad()
    loss.backward()
    opt.step()


def calibrate(step_ms: float) -> int:
    """The hidden width whose training step takes about ``step_ms`` milliseconds here."""
    import torch

    rng = np.random.default_rng(1)
    batch = {
        "x": rng.random((BATCH, FEATURES), dtype=np.float32),
        "logits": rng.random((BATCH, CLASSES), dtype=np.float32),
        "y": rng.integers(0, CLASSES, BATCH),
    }
    hidden = 64
    while True:
        model = _model(hidden)
        opt = torch.optim.Adam(model.parameters())
        for _ in range(5):
            _step(model, opt, batch)
        t0 = time.perf_counter()
        for _ in range(20):
            _step(model, opt, batch)
        ms = (time.perf_counter() - t0) / 20 * 1e3
        if ms >= step_ms or hidden >= 8192:
            return hidden
        hidden = int(hidden * max(1.2, min(2.0, (step_ms / ms) ** 0.5)))


def run(transport: str, steps: int, hidden: int) -> tuple[float, float]:
    """One run: (wait fraction, mean step time in ms) of a student over ``transport``."""
    import torch

    from pantheon import Student

    port = free_port()
    proc = spawn(_teacher, port, steps)
    model = _model(hidden)
    opt = torch.optim.Adam(model.parameters())
    with Student(timeout=120, transport=transport) as student:
        student.register_teacher(in_address=f"127.0.0.1:{port}")
        student.start()
        gen = student.get_knowledge_generator(batch_size=BATCH)()
        _step(model, opt, next(gen))  # the first batch: connection and start-up, not counted
        wait0 = student.stats()["wait_seconds"]
        t0 = time.perf_counter()
        n = 0
        for batch in gen:
            _step(model, opt, batch)
            n += 1
        elapsed = time.perf_counter() - t0
        stats = student.stats()
        used = set(stats.get("transport", {}).values()) or {"?"}
    finish(proc)
    if transport == "auto" and used != {"shm"}:
        print(f"note: the same-host run used {used}", file=sys.stderr)
    return (stats["wait_seconds"] - wait0) / elapsed, elapsed / max(n, 1) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per transport")
    parser.add_argument("--step-ms", type=float, default=2.0, help="target step time (ms)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    hidden = calibrate(args.step_ms)
    names = {"tcp": "TCP (transport='tcp')", "auto": "same host (transport='auto': shm)"}
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for _ in range(args.repeats):
        for transport in names:
            results[transport].append(run(transport, args.steps, hidden))
    rows = []
    for transport, label in names.items():
        wait = median([r[0] for r in results[transport]])
        step = median([r[1] for r in results[transport]])
        verdict = "met" if wait < 0.02 else "NOT met"
        rows.append([label, f"{step:.2f}", f"{100 * wait:.2f} %", f"< 2 %: {verdict}"])
    print(
        f"student wait for knowledge: MLP {FEATURES}-{hidden}-{hidden}-{CLASSES}, batch {BATCH}, "
        f"{args.steps} steps, medians of {args.repeats} runs ({os.cpu_count()} CPUs)"
    )
    print(table(["transport", "ms per step", "waiting", "target"], rows))


if __name__ == "__main__":
    main()
