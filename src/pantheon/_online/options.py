"""How a serve call of an online teacher waits for its students and batches their queries."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeOptions"]


@dataclass(frozen=True)
class ServeOptions:
    """How many students a serve call waits for and how queries are batched.

    Attributes:
        groups: complete student groups a round waits for, and that must finish (>= 1).
        max_batch: query mode: merge queries of several students into program calls of at
            most this many samples (``None``: one call per query).
        max_delay: query mode: seconds to wait for more queries to merge (default 0.002).
    """

    groups: int = 1
    max_batch: int | None = None
    max_delay: float = 0.002
