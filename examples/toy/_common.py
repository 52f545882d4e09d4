"""Shared pieces of the toy teachers: the data reader and the flags (as the seed's toy)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import numpy as np

MAX_N = 1000


def str2bool(value: str) -> bool:
    """Parse the seed's boolean flags ("true"/"false", "1"/"0")."""
    if value.lower() in ("true", "t", "yes", "1"):
        return True
    if value.lower() in ("false", "f", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def teacher_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out_path", type=str, default=None, help="offline: knowledge file to write"
    )
    parser.add_argument("--out_port", type=int, default=None, help="online: TCP port (0: any free)")
    parser.add_argument(
        "--generator_type",
        choices=["sample_generator", "sample_list_generator", "batch_generator"],
        default="batch_generator",
        help="how the reader hands out the data (default: batch_generator)",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="the teacher's own batch size")
    parser.add_argument("--serving_times", type=int, default=1, help="online: rounds to serve")
    parser.add_argument("--workers", type=int, default=1, help="CPU workers predicting in parallel")
    parser.add_argument("--test_send_recv", type=str2bool, default=False)
    parser.add_argument(
        "--address_file",
        type=str,
        default=None,
        help="online: write the real 'host:port' here once listening",
    )
    args = parser.parse_args()
    if (args.out_path is None) == (args.out_port is None):
        parser.error("give exactly one of --out_path (offline) or --out_port (online)")
    return args


def reader_config(generator_type: str, batch_size: int) -> dict[str, object]:
    """The seed's three reader configurations over x = 0..999 (int64, shape [-1, 1])."""

    def sample_generator() -> Iterator[tuple[np.ndarray]]:
        for i in range(MAX_N):
            yield (np.array([i], dtype=np.int64),)

    def sample_list_generator() -> Iterator[list[tuple[np.ndarray]]]:
        samples: list[tuple[np.ndarray]] = []
        for sample in sample_generator():
            samples.append(sample)
            if len(samples) == batch_size:
                yield samples
                samples = []
        if samples:
            yield samples

    def batch_generator() -> Iterator[tuple[np.ndarray]]:
        for start in range(0, MAX_N, batch_size):
            stop = min(start + batch_size, MAX_N)
            yield (np.arange(start, stop, dtype=np.int64).reshape(-1, 1),)

    generators: dict[str, Callable[[], object]] = {
        "sample_generator": sample_generator,
        "sample_list_generator": sample_list_generator,
        "batch_generator": batch_generator,
    }
    config: dict[str, object] = {generator_type: generators[generator_type]}
    if generator_type == "sample_generator":
        config.update(batch_size=batch_size, drop_last=False)
    return config


def run_teacher(
    args: argparse.Namespace, program: Callable[..., dict[str, np.ndarray]], schema: dict[str, str]
) -> None:
    from pantheon import Teacher

    teacher = Teacher(out_path=args.out_path, out_port=args.out_port)
    if args.out_port is not None:
        print(f"teacher listening on {teacher.address}", flush=True)
        if args.address_file:
            with open(args.address_file + ".tmp", "w") as f:
                f.write(teacher.address)
            import os

            os.replace(args.address_file + ".tmp", args.address_file)
    teacher.start()
    if args.test_send_recv:
        for i in range(3):
            teacher.send({"from": "teacher", "message": i, "data": np.arange(i + 1)})
        print("recv from student:", teacher.recv(), flush=True)
    teacher.start_knowledge_service(
        feed_list=["x"],
        schema=schema,
        program=program,
        reader_config=reader_config(args.generator_type, args.batch_size),
        exe=args.workers if args.workers > 1 else None,
        buf_size=10,
        times=args.serving_times,
    )
    teacher.close()
    print("teacher done", flush=True)
