"""A teacher process that runs out of file descriptors (run as a script by the fault suite).

It lowers its own RLIMIT_NOFILE to what it has open plus ``--spare``, prints ``READY
host:port`` and serves until killed; connections beyond the spare descriptors make its
accept loop fail with EMFILE.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys

import numpy as np

from pantheon import Teacher


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--spare", type=int, default=6)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    teacher = Teacher(out_port=0, timeout=120)
    used = len(os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + args.spare, hard))
    print(f"READY {teacher.address}", flush=True)

    def reader():
        yield {"x": np.arange(10, dtype=np.int64).reshape(-1, 1)}

    teacher.serve(reader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
