"""Toy student: merges the knowledge of the two toy teachers (offline, online or hybrid)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _common import MAX_N, str2bool

from pantheon import Student


def main() -> int:
    parser = argparse.ArgumentParser(description="Toy student of two teachers")
    parser.add_argument("--in_address0", default=None, help="teacher 0 online: host:port")
    parser.add_argument("--in_path0", default=None, help="teacher 0 offline: knowledge file")
    parser.add_argument("--in_address1", default=None, help="teacher 1 online: host:port")
    parser.add_argument("--in_path1", default=None, help="teacher 1 offline: knowledge file")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--merge", choices=["sum", "mean"], default="sum")
    parser.add_argument("--serving_times", type=int, default=1, help="rounds to read")
    parser.add_argument("--test_send_recv", type=str2bool, default=False)
    parser.add_argument("--verbose", type=str2bool, default=False, help="print every sample")
    args = parser.parse_args()

    student = Student(merge_strategy={"result": args.merge})
    student.register_teacher(in_address=args.in_address0, in_path=args.in_path0)
    student.register_teacher(in_address=args.in_address1, in_path=args.in_path1)
    student.start()

    if args.test_send_recv:
        for teacher_id in range(2):
            for _ in range(3):
                print(f"recv from teacher {teacher_id}:", student.recv(teacher_id))
        student.send("message from student!")

    desc = student.get_knowledge_desc()
    print("knowledge desc:", desc)
    factor = 4 if args.merge == "sum" else 2
    for round_index in range(args.serving_times):
        gen = student.get_knowledge_generator(batch_size=args.batch_size, drop_last=False)
        sizes, seen = [], []
        for batch in gen():
            sizes.append(len(batch["x"]))
            seen.append(batch["x"].ravel())
            assert np.array_equal(batch["result"], factor * batch["x"]), (
                "result != merged knowledge"
            )
            assert np.array_equal(batch["2x-1"], 2 * batch["x"] - 1)
            assert np.array_equal(batch["2x+1"], 2 * batch["x"] + 1)
            if args.verbose:
                for i in range(len(batch["x"])):
                    print({k: v[i].tolist() for k, v in batch.items()})
        xs = np.concatenate(seen)
        ok = np.array_equal(xs, np.arange(MAX_N))
        full, last = divmod(MAX_N, args.batch_size)
        print(
            f"round {round_index}: {len(xs)} samples in {len(sizes)} batches "
            f"({full} x {args.batch_size}" + (f" + {last}" if last else "") + "), "
            f"in order: {ok}, result == {factor}x: True"
        )
        if not ok:
            return 1
    student.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
