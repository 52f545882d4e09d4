"""A data-parallel student for the torchrun test (run by ``torch.distributed.run``).

Each rank is one process of group ``ddp``: it reads its shard of every round from the
teacher (``distributed_rank`` gives its rank and world size), trains a linear model wrapped
in ``DistributedDataParallel`` on ``y`` from ``x``, and writes what it saw to
``OUT/rank<R>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import pantheon.torch as pt
from pantheon import Student


def main() -> int:
    address, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    ids: list[int] = []
    batches = 0
    with Student(timeout=120, group="ddp", **pt.distributed_rank()) as student:
        student.register_teacher(in_address=address)
        gen = student.get_knowledge_generator(batch_size=16, drop_last=True)
        for _epoch in range(2):
            for batch in gen():
                x = pt.to_tensor(batch["x"]).float()
                loss = torch.nn.functional.mse_loss(model(x), pt.to_tensor(batch["y"]))
                optimizer.zero_grad()
                loss.backward()  # DDP all-reduces: every rank must take the same steps
                optimizer.step()
                ids += batch["x"].ravel().tolist()
                batches += 1
    rank = dist.get_rank()
    weight = float(model.module.weight.detach().ravel()[0])
    (out / f"rank{rank}.json").write_text(
        json.dumps({"batches": batches, "ids": ids, "final_weight": weight})
    )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
