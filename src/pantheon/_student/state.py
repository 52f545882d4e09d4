"""The student's position, saved and loaded: ``Student.state_dict`` / ``load_state_dict``
(:class:`Resumable`, a base of :class:`~pantheon.Student`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError
from .._util import check_int
from .assembler import Assembler
from .fingerprints import check_resumed, known, parse_recorded
from .sources import Source

__all__ = ["MAX_POSITION", "STATE_VERSION", "Resumable", "check_shard", "parse_state"]

log = logging.getLogger("pantheon")

STATE_VERSION = 3
"""Version of ``Student.state_dict()``; versions 1 (``position`` for ``sample_in_round``) and 2
(no ``fingerprints``) load."""
MAX_POSITION = 2**62
"""Largest round or sample number a state dict may hold (the wire's limit on ids)."""


def check_shard(group: object, rank: object, world_size: object) -> tuple[str, int, int]:
    """``(group, rank, world_size)`` of a student, checked.

    Raises:
        ConfigError: a group that is not a non-empty name of at most 256 characters, a
            world_size that is not a positive integer, a rank outside ``0..world_size-1``.
    """
    if not isinstance(group, str) or not group or len(group) > 256:
        raise ConfigError(f"group must be a non-empty name (at most 256 characters), got {group!r}")
    world = check_int("world_size", world_size, unit="processes")
    r = check_int("rank", rank, minimum=0)
    if r >= world:
        raise ConfigError(
            f"rank {r} is not a rank of a group of world_size {world}; ranks are 0..{world - 1}"
        )
    return group, r, world


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


class Resumable:
    """The resume methods of :class:`~pantheon.Student` (its base class)."""

    _round: int
    _sample_in_round: int
    _sources: list[Source]
    _group: str
    _rank: int
    _world: int
    _resumed: list[dict[str, str]]
    _assembler: Assembler | None

    def _check_open(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The student's position: the round, and the samples of it already handed out.

        ``{"version": 3, "round": int, "sample_in_round": int, "teachers": [names], "group",
        "rank", "world_size", "fingerprints": [dict per teacher]}``; ``sample_in_round``
        counts this rank's samples. Save it with your checkpoint (each rank its own);
        ``load_state_dict`` on a new Student (the same teachers registered, the same rank)
        resumes exactly there.
        """
        return {
            "version": STATE_VERSION,
            "round": self._round,
            "sample_in_round": self._sample_in_round,
            "teachers": [s.name for s in self._sources],
            "group": self._group,
            "rank": self._rank,
            "world_size": self._world,
            "fingerprints": known(self._sources),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: the next generator starts at that round and sample.

        Versions 1 (``position`` for ``sample_in_round``) and 2 (no fingerprints) load too.

        Raises:
            ConfigError: not a state dict, a version this Pantheon does not know, a round or
                sample that is not an integer >= 0, teachers that differ from the ones
                registered (the message lists both), or a teacher fingerprint that differs
                (now, or once the teacher tells it: :mod:`pantheon._student.fingerprints`).
        """
        self._check_open()
        shard = (self._group, self._rank, self._world)
        rnd, sample = parse_state(state, [s.name for s in self._sources], shard)
        self._resumed = parse_recorded(state, len(self._sources))
        check_resumed(self._resumed, self._sources)
        if self._assembler is not None:
            self._assembler.stop()
            self._assembler = None
        self._round, self._sample_in_round = rnd, sample
