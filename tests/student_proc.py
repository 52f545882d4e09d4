"""A student process for the integration tests (run as a script, never imported by pytest).

It reads ``--rounds`` rounds from a teacher as rank ``--rank`` of ``--world`` in group
``--group``. After every batch it writes, atomically, a checkpoint file holding its
``state_dict()`` and every sample id it handed to its "training loop" so far, the way a
training job checkpoints; on start it resumes from that file if it exists. It prints
``STEP n`` after the n-th batch it handed out, ``ROUND r`` once round ``r`` is complete and
``DONE`` at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from pantheon import Student


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--group", default="default")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--cache", default=None)
    p.add_argument("--drop-last", action="store_true")
    p.add_argument("--delay", type=float, default=0.0, help="seconds per training step")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--transport", default="auto")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    path = Path(args.checkpoint)
    saved = json.loads(path.read_text()) if path.exists() else None
    seen: list[list[int]] = saved["seen"] if saved else [[] for _ in range(args.rounds)]
    student = Student(
        timeout=args.timeout,
        group=args.group,
        rank=args.rank,
        world_size=args.world,
        transport=args.transport,
    )
    student.register_teacher(in_address=args.address, cache_path=args.cache)
    if saved is not None:
        student.load_state_dict(saved["state"])
    student.start()
    gen = student.get_knowledge_generator(batch_size=args.batch, drop_last=args.drop_last)
    n = 0
    while student.state_dict()["round"] < args.rounds:
        rnd = student.state_dict()["round"]
        for batch in gen():
            if args.delay:
                time.sleep(args.delay)
            seen[rnd].extend(int(i) for i in batch["x"].ravel())
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"state": student.state_dict(), "seen": seen}))
            os.replace(tmp, path)  # the checkpoint: this batch is consumed
            n += 1
            print(f"STEP {n}", flush=True)
        if student.state_dict()["round"] == rnd:  # the round ended without batches
            break
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"state": student.state_dict(), "seen": seen}))
        os.replace(tmp, path)
        print(f"ROUND {rnd}", flush=True)
    transports = sorted(set(student.stats().get("transport", {}).values()))
    print(f"TRANSPORT {','.join(transports)} {student.stats().get('shm_messages', 0)}", flush=True)
    student.close()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
