"""A torch teacher on a device, served to a student in another process, against the bare model.

The online path with a real model, end to end as users run it: ``start_knowledge_service`` with
a :class:`~pantheon.torch.TorchProgram` on ``--device`` in a child process (spawned), and a
``Student`` in this process reading the knowledge through
:class:`~pantheon.torch.KnowledgeDataset` (its tensors pinned with ``--pin`` where CUDA is
there) and moving each batch to ``--student-device``. Methods:

``bare``  the same model in a plain loop in this process over the same batches: inputs to the
          device, predict, outputs back to the host (``.cpu()``): what the teacher alone does.
``tcp``   the service to ``Student(transport="tcp")``.
``shm``   the service to ``Student(transport="auto")``: on one host, the shared-memory ring.

Runs are interleaved after a warm-up; each times the batches after the first (the first
carries the connection and the model's start-up; the teacher's reader holds the second back
until the student has the first, so no batch is predicted before the clock starts). The
table shows medians of samples/s, each method's ratio to ``bare`` (the service's cost: at
most the teacher's own speed), the knowledge's MB/s (10**6 bytes of logits per second), the
share of the student's time spent waiting for knowledge (``Student.stats()``; this student
does nothing else, so it waits whenever the teacher is the limit), the transport used and
whether the student's tensors were pinned. Each run checks that the student got the
bare model's logits (its first batch, to float tolerance).

    python benchmarks/device.py                       # CPU: about half a minute on 2 cores
    python benchmarks/device.py --device cuda:0 --student-device cuda:0 --pin \\
        --hidden 8192 --batch-size 1024 --batches 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the two processes share the host's cores

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import finish, free_port, median, spawn, sync, table


@dataclass(frozen=True)
class Config:
    """The model, its batches and where each side runs (shared by both processes)."""

    device: str = "cpu"
    student_device: str = "cpu"
    pin: bool = False
    features: int = 256
    hidden: int = 1024
    classes: int = 1000
    batch_size: int = 256
    batches: int = 40
    threads: int = 1


@dataclass(frozen=True)
class Run:
    """One timed run: samples after the first batch, their seconds, the wait and transport."""

    samples: int
    seconds: float
    nbytes: int
    wait: float
    transport: str
    pinned: bool

    @property
    def samples_s(self) -> float:
        return self.samples / self.seconds


def _model(cfg: Config) -> Any:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(cfg.features, cfg.hidden),
        torch.nn.GELU(),
        torch.nn.Linear(cfg.hidden, cfg.hidden),
        torch.nn.GELU(),
        torch.nn.Linear(cfg.hidden, cfg.classes),
    )
    return model.to(cfg.device).eval()


def _batches(cfg: Config) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (cfg.batch_size, cfg.features)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(cfg.batches)]


def run_bare(cfg: Config, model: Any, batches: list[np.ndarray]) -> tuple[Run, np.ndarray]:
    """The model in a plain loop; returns the run and the first batch's logits (host)."""
    import torch

    dev = torch.device(cfg.device)
    first: np.ndarray | None = None
    nbytes = 0
    with torch.inference_mode():
        for i, x in enumerate(batches):
            if i == 1:
                sync(cfg.device)
                t0 = time.perf_counter()
            out = model(torch.from_numpy(x).to(dev)).cpu().numpy()
            if i == 0:
                first = out
            else:
                nbytes += out.nbytes
    elapsed = time.perf_counter() - t0
    assert first is not None
    samples = (len(batches) - 1) * cfg.batch_size
    return Run(samples, elapsed, nbytes, 0.0, "-", False), first


def _teacher(port: int, config: dict[str, Any], gate: Any) -> None:
    import torch

    from pantheon import Teacher
    from pantheon.torch import TorchProgram

    cfg = Config(**config)
    torch.set_num_threads(cfg.threads)
    program = TorchProgram(_model(cfg), ["x"], num_threads=cfg.threads)
    batches = _batches(cfg)

    def reader() -> Any:
        for i, x in enumerate(batches):
            # not ahead of the student's clock, which starts at the first batch
            if i == 1 and not gate.wait(120):
                raise RuntimeError("the student did not receive the first batch within 120 s")
            yield (x,)

    with Teacher(out_port=port, timeout=120) as teacher:
        teacher.start_knowledge_service(
            feed_list=["x"],
            schema={"logits": "output"},
            program=program,
            reader_config={"batch_generator": reader},
            exe=cfg.device,
            progress=False,
        )


def run_service(cfg: Config, transport: str, expected: np.ndarray) -> Run:
    """The service in a child, the student here over ``transport`` ("tcp" or "auto")."""
    port = free_port()
    gate = mp.get_context("spawn").Event()
    proc = spawn(_teacher, port, asdict(cfg), gate)
    try:
        run = _student(cfg, port, transport, expected, gate)
    except BaseException:
        proc.kill()  # a failed check or a student error: the teacher is not waited for
        proc.join()
        raise
    finish(proc, timeout=120)
    return run


def _student(cfg: Config, port: int, transport: str, expected: np.ndarray, gate: Any) -> Run:
    import torch

    from pantheon import Student
    from pantheon.torch import KnowledgeDataset

    dev = torch.device(cfg.student_device)
    seen = nbytes = 0
    pinned = False
    with Student(timeout=120, transport=transport) as student:
        student.register_teacher(in_address=f"127.0.0.1:{port}")
        student.start()
        data = KnowledgeDataset(student.get_knowledge_generator(cfg.batch_size), pin_memory=cfg.pin)
        for batch in data:
            logits = batch["logits"]
            pinned = pinned or bool(logits.is_pinned())
            moved = logits.to(dev, non_blocking=True)
            if not seen:
                _check(expected, moved.cpu().numpy(), transport)
                wait0 = student.stats()["wait_seconds"]
                t0 = time.perf_counter()
                gate.set()
            else:
                nbytes += logits.numel() * logits.element_size()
            seen += 1
        sync(cfg.student_device)
        elapsed = time.perf_counter() - t0
        stats = student.stats()
    if seen != cfg.batches:
        raise RuntimeError(f"{transport}: expected {cfg.batches} batches, the student got {seen}")
    used = "/".join(sorted(set(stats.get("transport", {}).values()))) or "?"
    wait = (stats["wait_seconds"] - wait0) / elapsed
    return Run((seen - 1) * cfg.batch_size, elapsed, nbytes, wait, used, pinned)


def _check(expected: np.ndarray, got: np.ndarray, where: str) -> None:
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
        worst = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else None
        raise RuntimeError(
            f"{where}: the student's first batch of logits is not the bare model's (shape "
            f"{got.shape} against {expected.shape}, largest difference {worst})"
        )


METHODS = {"bare": None, "tcp": "tcp", "shm": "auto"}
"""Method name -> the student's transport (``bare``: no student, the model alone)."""

DESCRIPTIONS = {
    "bare": "the model in a plain loop here: inputs to the device, predict, outputs to the host",
    "tcp": "start_knowledge_service(TorchProgram) in a child -> Student(transport='tcp') here",
    "shm": "the same -> Student(transport='auto'): same-host shared memory",
}
"""One line per method, printed above the table."""


def measure(cfg: Config, methods: list[str], repeats: int) -> dict[str, list[Run]]:
    """A warm-up of each method, then ``repeats`` interleaved runs of each."""
    import torch

    torch.set_num_threads(cfg.threads)
    model, batches = _model(cfg), _batches(cfg)
    _, expected = run_bare(cfg, model, batches)
    runs: dict[str, list[Run]] = {m: [] for m in methods}
    for timed in [False] + [True] * repeats:
        for m in methods:
            transport = METHODS[m]
            run = (
                run_bare(cfg, model, batches)[0]
                if transport is None
                else run_service(cfg, transport, expected)
            )
            if timed:
                runs[m].append(run)
    return runs


def report(cfg: Config, runs: dict[str, list[Run]]) -> str:
    """The table: medians per method, ratios to ``bare`` when it ran."""
    rates = {m: median([r.samples_s for r in rs]) for m, rs in runs.items()}
    base = rates.get("bare")
    rows = []
    for m, rs in runs.items():
        mb_s = median([r.nbytes / r.seconds / 1e6 for r in rs])
        rows.append(
            [
                m,
                f"{rates[m]:,.0f}",
                "-" if not base else f"{rates[m] / base:.2f}",
                f"{mb_s:,.0f}",
                "-" if m == "bare" else f"{100 * median([r.wait for r in rs]):.1f} %",
                rs[-1].transport,
                "-" if m == "bare" else ("yes" if all(r.pinned for r in rs) else "no"),
            ]
        )
    head = ["method", "samples/s", "x bare", "MB/s", "waiting", "transport", "pinned"]
    title = (
        f"torch teacher MLP {cfg.features}-{cfg.hidden}-{cfg.hidden}-{cfg.classes} on "
        f"{cfg.device}, batch {cfg.batch_size}, {cfg.batches} batches per run; student on "
        f"{cfg.student_device}, pin {'on' if cfg.pin else 'off'}; medians of "
        f"{len(next(iter(runs.values())))} runs ({os.cpu_count()} CPUs)"
    )
    lines = [f"  {m:<5} {DESCRIPTIONS[m]}" for m in runs]
    return "\n".join([title, *lines, table(head, rows)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    ap.add_argument("--device", default=defaults.device, help="the teacher's device ('cpu')")
    ap.add_argument("--student-device", default=defaults.student_device)
    ap.add_argument("--pin", action="store_true", help="pin the student's tensors (CUDA only)")
    for name in ("features", "hidden", "classes", "batch_size", "batches", "threads"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    args = ap.parse_args(argv)
    if args.batches < 2:
        ap.error(f"--batches must be at least 2 (the first is not timed), got {args.batches}")
    cfg = Config(**{k: v for k, v in vars(args).items() if k not in ("repeats", "methods")})
    import torch

    print(f"torch {torch.__version__}, CUDA {'available' if torch.cuda.is_available() else 'no'}")
    if cfg.pin and not torch.cuda.is_available():
        print("note: --pin has no effect without CUDA (pinned: no)")
    print(report(cfg, measure(cfg, args.methods.split(","), args.repeats)))


if __name__ == "__main__":
    main()
