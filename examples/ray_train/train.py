"""Distillation on Ray Train: a TorchTrainer of 2 workers, each a rank of one student group.

The teacher (a fixed linear classifier, seeded) is served two ways on one Ray cluster:

* **online**: a same-order :class:`pantheon.ray.TeacherPool` of 2 replicas splits each round
  of the reader between them; every worker registers ``in_address="ray://NAME"`` as rank
  ``r`` of 2 and receives samples ``r, r + 2, ...`` of the round, in order;
* **offline**: :func:`pantheon.ray.generate_knowledge` writes the teacher's logits over a Ray
  Dataset as knowledge shards first; every worker reads its shard of them
  (``in_path=...``, rank ``r`` of 2).

Each worker trains a small student (DDP through ``ray.train.torch.prepare_model``) with
Hinton's soft-target loss. Run it::

    python examples/ray_train/train.py --samples 2048 --epochs 2

It starts a local Ray instance (``--address auto`` joins a running cluster) and prints, for
each phase, what the ranks received together and the loss before and after.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer, prepare_model

from pantheon import Student
from pantheon.ray import TeacherPool, generate_knowledge
from pantheon.torch import soft_target_kl

FEATURES, CLASSES, BATCH = 8, 4, 32


def features(n: int) -> np.ndarray:
    """The data: ``n`` samples of ``FEATURES`` floats (the same for every process)."""
    return np.random.default_rng(0).standard_normal((n, FEATURES)).astype(np.float32)


def teacher() -> torch.nn.Module:
    """The teacher model, the same weights in every process."""
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, CLASSES).eval()


def service(samples: int) -> Any:
    """The pool's factory: run in each replica's constructor (builds the model there)."""

    def make() -> dict[str, Any]:
        data = features(samples)

        def reader():
            for i in range(samples):
                yield (data[i],)

        return {
            "feed_list": ["x"],
            "schema": {"x": "x", "logits": "output"},
            "program": teacher(),
            "reader_config": {"sample_generator": reader, "batch_size": BATCH, "drop_last": False},
            "times": 1000,  # rounds a replica can serve: epochs of any later run
        }

    return make


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: one rank of the student group, online then offline."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    report: dict[str, Any] = {}
    sources = {"online": {"in_address": config["pool"]}, "offline": {"in_path": config["shards"]}}
    for phase, source in sources.items():
        torch.manual_seed(1)  # a fresh student for each phase
        model = prepare_model(torch.nn.Linear(FEATURES, CLASSES))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        student = Student(group=f"ray-train-{phase}", rank=rank, world_size=world, timeout=120)
        student.register_teacher(**source)
        gen = student.get_knowledge_generator(batch_size=16)
        losses, seen = [], 0
        checksum = 0.0
        for _ in range(config["epochs"]):
            for batch in gen():
                x = torch.from_numpy(np.ascontiguousarray(batch["x"]))
                loss = soft_target_kl(model(x), torch.from_numpy(batch["logits"]))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss))
                seen += len(x)
                checksum += float(x.double().sum())
        student.close()
        totals = torch.tensor([seen, checksum], dtype=torch.float64)
        torch.distributed.all_reduce(totals)  # what all the ranks received together
        report[f"{phase}_samples"] = int(totals[0])
        report[f"{phase}_checksum"] = float(totals[1])
        report[f"{phase}_first_loss"] = losses[0]
        report[f"{phase}_last_loss"] = float(np.mean(losses[-4:]))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # the student's weights: the checkpoint the metrics belong to
            torch.save(model.state_dict(), Path(tmp) / "student.pt")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(report, checkpoint=checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--address", default=None, help="a Ray cluster to join (default: start one)")
    args = parser.parse_args()
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "knowledge"
        data = features(args.samples)
        dataset = ray.data.from_items([{"id": i, "x": data[i]} for i in range(args.samples)])
        t0 = time.perf_counter()
        generate_knowledge(
            dataset,
            shards,
            feed_list=["x"],
            schema={"x": "x", "logits": "output"},
            program=teacher(),
            batch_size=BATCH,
            concurrency=1,
            num_cpus=0.5,
            shard_samples=512,
        )
        print(f"generated the offline knowledge in {time.perf_counter() - t0:.1f} s", flush=True)
        with TeacherPool("ray-train-teacher", service(args.samples), replicas=2, num_cpus=0.5):
            print(f"the pool serves after {time.perf_counter() - t0:.1f} s", flush=True)
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={
                    "pool": "ray://ray-train-teacher",
                    "shards": str(shards),
                    "epochs": args.epochs,
                },
                scaling_config=ray.train.ScalingConfig(
                    num_workers=args.workers, resources_per_worker={"CPU": 0.5}
                ),
                run_config=ray.train.RunConfig(storage_path=str(Path(tmp) / "runs")),
            )
            metrics = trainer.fit().metrics
            print(f"trained after {time.perf_counter() - t0:.1f} s", flush=True)
    expected = args.samples * args.epochs
    checksum = float(data.astype(np.float64).sum()) * args.epochs
    for phase in ("online", "offline"):
        got = metrics[f"{phase}_samples"]
        same = abs(metrics[f"{phase}_checksum"] - checksum) < 1e-6 * max(1.0, abs(checksum))
        better = metrics[f"{phase}_last_loss"] < metrics[f"{phase}_first_loss"]
        print(
            f"{phase}: {args.workers} ranks received {got} of {expected} samples, every sample "
            f"once: {got == expected and same}; loss {metrics[f'{phase}_first_loss']:.4f} -> "
            f"{metrics[f'{phase}_last_loss']:.4f}, lower: {better}",
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
