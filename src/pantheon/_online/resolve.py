"""Addresses by name: ``scheme://NAME`` addresses resolved to the replicas of a teacher pool.

``register_teacher(in_address="ray://pool")`` does not name a host and port but a pool whose
members change (a replica restarted on another port, replicas added or removed). A module
that knows such pools registers a *resolver opener* for its scheme with
:func:`register_scheme`; :func:`open_resolver` finds it, importing the module that provides a
known scheme by name the first time its address is seen (``ray`` -> ``pantheon.ray``), so
that this layer never imports it.

A :class:`Resolver` answers :meth:`Resolver.members` with a :class:`Membership`: the pool's
mode, its replica slots (the address of each, ``None`` while a slot is not serving), how many
slots are active, and for a same-order pool the block size its replicas split a round by.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._errors import ConfigError

__all__ = [
    "MODES",
    "Membership",
    "Resolver",
    "open_resolver",
    "register_scheme",
    "scheme_of",
]

MODES = ("queries", "rounds")
"""What a pool serves: ``queries`` (each replica answers any query) or ``rounds`` (the
replicas split every round of a reader, block by block)."""

_SCHEME = re.compile(r"([a-z][a-z0-9+.-]{0,31})://(.+)")
_KNOWN = {"ray": "pantheon.ray"}  # scheme -> the module that registers it when imported
_openers: dict[str, Callable[[str], Resolver]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Membership:
    """A pool's members as its registry holds them now.

    Attributes:
        mode: ``"queries"`` or ``"rounds"`` (:data:`MODES`).
        replicas: the address (``"host:port"``) of each replica slot, ``None`` for a slot
            whose replica is not serving (starting, restarting, or removed).
        active: slots ``0..active-1`` are members; higher slots were removed by a scale-down.
        block: rounds mode: samples per block (replica ``j`` of ``R`` predicts blocks
            ``j, j + R, ...`` of every round); 0 in query mode.
    """

    mode: str
    replicas: tuple[str | None, ...]
    active: int
    block: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"a pool's mode must be one of {list(MODES)}, got {self.mode!r}")
        if not 0 <= self.active <= len(self.replicas):
            raise ConfigError(
                f"a pool's active slots ({self.active}) must be 0..{len(self.replicas)}"
            )
        if self.mode == "rounds" and self.block < 1:
            raise ConfigError(f"a same-order pool needs a block size >= 1, got {self.block}")

    def address(self, slot: int) -> str | None:
        """The address of ``slot``, or None (not serving, or not a member)."""
        if slot >= self.active:
            return None
        return self.replicas[slot]


@runtime_checkable
class Resolver(Protocol):
    """The members of one named pool."""

    name: str  # the address as given, e.g. "ray://pool"

    def members(self, timeout: float) -> Membership:
        """The pool's membership now (asks its registry; waits at most ``timeout`` s).

        Raises:
            TeacherError: the pool is not known or its registry is gone.
            PantheonTimeoutError: no answer within ``timeout``.
        """
        ...


def scheme_of(address: str) -> str | None:
    """The scheme of a ``scheme://NAME`` address, or None for a ``host:port``."""
    match = _SCHEME.fullmatch(address) if isinstance(address, str) else None
    return match.group(1) if match else None


def register_scheme(scheme: str, opener: Callable[[str], Resolver]) -> None:
    """Make ``scheme://NAME`` addresses resolvable: ``opener(address)`` returns a resolver.

    Registering a scheme again replaces its opener.
    """
    if not isinstance(scheme, str) or _SCHEME.fullmatch(f"{scheme}://x") is None:
        raise ConfigError(f"a scheme is a lowercase name such as 'ray', got {scheme!r}")
    with _lock:
        _openers[scheme] = opener


def open_resolver(address: str) -> Resolver:
    """The resolver of a ``scheme://NAME`` address.

    Raises:
        ConfigError: not a ``scheme://NAME`` address, or a scheme nobody registered.
        MissingDependencyError: the module of a known scheme needs an extra not installed.
    """
    scheme = scheme_of(address)
    if scheme is None:
        raise ConfigError(f"{address!r} is not a 'scheme://NAME' address")
    with _lock:
        opener = _openers.get(scheme)
    if opener is None and scheme in _KNOWN:
        importlib.import_module(_KNOWN[scheme])  # registers its scheme when imported
        with _lock:
            opener = _openers.get(scheme)
    if opener is None:
        known = sorted(set(_openers) | set(_KNOWN))
        raise ConfigError(
            f"in_address {address!r}: no resolver for the scheme {scheme!r}; known schemes "
            f"are {known}, or give 'host:port' addresses"
        )
    return opener(address)
