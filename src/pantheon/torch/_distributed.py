"""Data-parallel students: a rank and a world size from ``torch.distributed``."""

from __future__ import annotations

import os

import torch.distributed as dist

from .._errors import ConfigError

__all__ = ["distributed_rank"]


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"the environment variable {name}={text!r} is not an integer") from None


def distributed_rank() -> dict[str, int]:
    """This process's ``{"rank": r, "world_size": w}``, for ``Student(**distributed_rank())``.

    From ``torch.distributed`` when its process group is initialised; else from the ``RANK``
    and ``WORLD_SIZE`` environment variables (``torchrun`` sets them); else rank 0 of 1. So a
    DDP script needs one line::

        student = Student(group="my-job", **pantheon.torch.distributed_rank())

    Raises:
        ConfigError: ``RANK``/``WORLD_SIZE`` are not integers, only one of them is set, or
            the rank is outside ``0..world_size-1``.
    """
    if dist.is_available() and dist.is_initialized():
        return {"rank": int(dist.get_rank()), "world_size": int(dist.get_world_size())}
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is None and world is None:
        return {"rank": 0, "world_size": 1}
    if rank is None or world is None:
        raise ConfigError(
            "only one of RANK and WORLD_SIZE is set in the environment; set both (torchrun "
            "does) or neither"
        )
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not a rank of WORLD_SIZE={world}")
    return {"rank": rank, "world_size": world}
