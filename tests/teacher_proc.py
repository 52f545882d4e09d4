"""A teacher process for the integration tests (run as a script, never imported by pytest).

It prints ``READY host:port`` once listening, then serves. Flags choose the behaviour.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from pantheon import Teacher


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--token", default=None)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--times", type=int, default=1)
    p.add_argument(
        "--offset", type=int, default=0, help="add this to the knowledge (tell teachers apart)"
    )
    p.add_argument("--delay", type=float, default=0.0, help="seconds per batch (a slow model)")
    p.add_argument("--width", type=int, default=1, help="features per sample")
    p.add_argument("--mode", choices=["stream", "query"], default="stream")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--heartbeat", type=float, default=None, help="heartbeat timeout (s)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    options = {}
    if args.heartbeat:
        options = {"heartbeat_interval": args.heartbeat / 5, "heartbeat_timeout": args.heartbeat}
    teacher = Teacher(
        out_port=args.port, host=args.host, token=args.token, timeout=args.timeout, **options
    )
    print(f"READY {teacher.address}", flush=True)

    def program(x: np.ndarray) -> dict[str, np.ndarray]:
        if args.delay:
            time.sleep(args.delay)
        feat = np.repeat(x.astype(np.float32), args.width, axis=1) + args.offset
        return {"x": x, "feat": feat}

    def batches():
        for start in range(0, args.samples, args.batch):
            stop = min(start + args.batch, args.samples)
            yield (np.arange(start, stop, dtype=np.int64).reshape(-1, 1),)

    teacher.start(timeout=args.timeout)
    reader = None if args.mode == "query" else {"batch_generator": batches}
    teacher.start_knowledge_service(
        feed_list=["x"],
        schema={"x": "x", "feat": "feat"},
        program=program,
        reader_config=reader,
        times=args.times,
    )
    print("DONE", teacher.stats(), flush=True)
    teacher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
