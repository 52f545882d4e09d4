"""The student's position, saved and loaded: ``Student.state_dict`` / ``load_state_dict``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError
from .._util import check_int

__all__ = ["MAX_POSITION", "STATE_VERSION", "parse_state"]

log = logging.getLogger("pantheon")

STATE_VERSION = 3
"""Version of ``Student.state_dict()``; versions 1 (``position`` for ``sample_in_round``) and 2
(no ``fingerprints``) load."""
MAX_POSITION = 2**62
"""Largest round or sample number a state dict may hold (the wire's limit on ids)."""


def parse_state(state: Any, teachers: list[str], shard: tuple[str, int, int]) -> tuple[int, int]:
    """``(round, sample_in_round)`` of a state dict, checked against the registered teachers
    and this student's ``(group, rank, world_size)``.

    Raises:
        ConfigError: naming what is wrong and how to fix it.
    """
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"load_state_dict expects the dict Student.state_dict() returned, got "
            f"{type(state).__name__}"
        )
    version = state.get("version")
    if version not in (1, 2, STATE_VERSION) or isinstance(version, bool):
        raise ConfigError(
            f"state_dict version {version!r} is not supported: this Pantheon reads versions 1 "
            f"to {STATE_VERSION}; a newer Pantheon wrote it, upgrade to load it"
        )
    key = "position" if version == 1 else "sample_in_round"
    missing = [k for k in ("round", key, "teachers") if k not in state]
    if missing:
        raise ConfigError(
            f"state_dict (version {version}) lacks {missing}; got keys {sorted(state)}"
        )
    rnd = check_int("state_dict['round']", state["round"], minimum=0, unit="rounds")
    sample = check_int(f"state_dict[{key!r}]", state[key], minimum=0, unit="samples")
    for name, value in (("round", rnd), (key, sample)):
        if value > MAX_POSITION:
            raise ConfigError(
                f"state_dict[{name!r}] is {value}, more than any round or sample number can be "
                f"({MAX_POSITION}); load the dict Student.state_dict() returned"
            )
    recorded = state["teachers"]
    if not isinstance(recorded, list) or len(recorded) != len(teachers):
        raise ConfigError(
            f"state_dict was saved with the teachers {recorded!r:.500}, but this Student has "
            f"{teachers!r}; register the same teachers in the same order before "
            "load_state_dict (a position in other knowledge would be meaningless)"
        )
    moved = [(a, b) for a, b in zip(recorded, teachers, strict=True) if a != b]
    for before, now in moved:  # a file or an address may move between runs: say so
        log.warning("resuming with %s where the state_dict recorded %r", now, before)
    recorded_shard = (
        state.get("group", "default"),
        state.get("rank", 0),
        state.get("world_size", 1),
    )
    if recorded_shard != shard:
        raise ConfigError(
            f"state_dict was saved by group {recorded_shard[0]!r} rank {recorded_shard[1]} of "
            f"{recorded_shard[2]}, but this Student is group {shard[0]!r} rank {shard[1]} of "
            f"{shard[2]}; load each rank's own state_dict (its position is in its own shard)"
        )
    return rnd, sample
