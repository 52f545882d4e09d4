"""A demo teacher in its own process: ``python -m pantheon._cli.demo.teacher_proc ...``.

It loads a trained teacher's weights (``.npz``, see :func:`pantheon._demo.models.save_weights`),
rebuilds the demo's transfer set (same split, same order as every other party) and runs
Pantheon's knowledge service over it:

* offline (``--out-path FILE``): dumps one round of knowledge to the file and exits;
* online (``--online``): binds a free port on ``--host``, prints one line
  ``PANTHEON_DEMO_ADDRESS host:port`` on stdout (flushed) *before* waiting for the student, then
  serves ``--times`` rounds (one per student epoch) and exits once the student acknowledged the
  last one.

Its log (stderr, which the demo writes to ``work/teacher_*.log``) holds Pantheon's INFO lines
and its own: which weights it loaded, and where it waits for the student.

Knowledge keys: ``"logits"`` (``float32 [B, 10]``), plus ``"image"`` and ``"label"`` passed
through from the reader with ``--pass-inputs``. Exit status 0 on success, 1 on any error (the
traceback goes to stderr), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..._logs import LOG_ENV, install_from_env
from .data import batch_reader, load_digits_split
from .models import TEACHER_KINDS, build_teacher, load_weights
from .procs import ADDRESS_PREFIX
from .train import writable_array

__all__ = ["ADDRESS_PREFIX", "build_parser", "main", "make_program"]

log = logging.getLogger("pantheon.demo")


def log_to_stderr() -> None:
    """Write the ``pantheon`` loggers' INFO records to stderr, one per line: in the format
    ``PANTHEON_LOG`` chooses (``json`` or ``text``), plain text when it is unset."""
    install_from_env({LOG_ENV: os.environ.get(LOG_ENV) or "text"})


def make_program(model: torch.nn.Module) -> Callable[..., np.ndarray]:
    """The knowledge-service program: ``program(image, label) -> logits`` (one array: "output")."""
    model.eval()

    def program(image: np.ndarray, label: np.ndarray) -> np.ndarray:
        del label  # passed through by the schema, not needed for prediction
        with torch.no_grad():
            x = torch.from_numpy(writable_array(image, np.float32))
            out: np.ndarray = model(x).numpy()
        return out

    return program


def build_parser() -> argparse.ArgumentParser:
    """The command line of a demo teacher process."""
    p = argparse.ArgumentParser(
        prog="python -m pantheon._cli.demo.teacher_proc", description=__doc__
    )
    p.add_argument("--kind", choices=TEACHER_KINDS, required=True, help="teacher architecture")
    p.add_argument("--weights", required=True, help="trained weights (.npz)")
    p.add_argument("--transfer-size", type=int, required=True, help="samples in the transfer set")
    p.add_argument("--transfer-seed", type=int, required=True, help="seed of the transfer set")
    p.add_argument("--batch-size", type=int, default=32, help="reader batch size (default 32)")
    p.add_argument("--pass-inputs", action="store_true", help="also serve 'image' and 'label'")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out-path", help="offline: dump the knowledge to this file")
    mode.add_argument("--online", action="store_true", help="online: serve over TCP")
    p.add_argument("--host", default="127.0.0.1", help="online: interface to bind")
    p.add_argument("--times", type=int, default=1, help="online: rounds to serve (default 1)")
    p.add_argument(
        "--start-timeout", type=float, default=120.0, help="online: wait for the student (s)"
    )
    return p


def _serve(args: argparse.Namespace) -> None:
    # Imported where used: building the parser needs no Pantheon runtime.
    from ... import Teacher

    torch.set_num_threads(1)
    model = load_weights(build_teacher(args.kind), args.weights)
    log.info("demo teacher %s: weights loaded from %s", args.kind, args.weights)
    split = load_digits_split(transfer_size=args.transfer_size, transfer_seed=args.transfer_seed)
    reader = batch_reader(split.x_transfer, split.y_transfer, args.batch_size)
    schema: dict[str, str] = {"logits": "output"}
    if args.pass_inputs:
        schema.update({"image": "image", "label": "label"})
    service: dict[str, Any] = {
        "feed_list": ["image", "label"],
        "schema": schema,
        "program": make_program(model),
        "reader_config": {"batch_generator": reader},
        "exe": None,
        "buf_size": 10,
    }
    if args.out_path is not None:
        teacher = Teacher(out_path=args.out_path)
        try:
            teacher.start()
            teacher.start_knowledge_service(**service, times=1)
        finally:
            teacher.close()
        return
    teacher = Teacher(out_port=0, host=args.host)
    try:
        # Report the real address before blocking in start(): the parent waits for this line.
        sys.stdout.write(f"{ADDRESS_PREFIX}{teacher.address}\n")
        sys.stdout.flush()
        log.info("demo teacher %s: waiting for the student on %s", args.kind, teacher.address)
        teacher.start(timeout=args.start_timeout)
        teacher.start_knowledge_service(**service, times=args.times)
    finally:
        teacher.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a demo teacher; returns the exit status."""
    args = build_parser().parse_args(argv)
    log_to_stderr()
    _serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
