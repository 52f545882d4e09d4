"""Helpers of the bottom layer: argument checks, checks of ragged lengths and offsets,
deadlines, waits, retry back-off and the bounded ``repr`` of untrusted values in error
messages.

Everything here is used by several layers; nothing here imports another Pantheon module but
the exception tree.
"""

from __future__ import annotations

import math
import reprlib
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import ConfigError, KnowledgeError

__all__ = [
    "Backoff",
    "Deadline",
    "check_int",
    "check_port",
    "check_seconds",
    "lengths_of_offsets",
    "lengths_total",
    "short_repr",
    "wait_until",
]


_INT64_MAX = 2**63 - 1
_ROWS_LIMIT = 2**62  # no real field has this many rows; sums at or past it are refused


def lengths_total(lengths: np.ndarray) -> int:
    """The number of rows that ragged ``lengths`` (int64, 1-D) add up to, checked.

    numpy's int64 sum wraps around silently (``[3, 2**63 - 1, 2**63 - 1, 2]`` "sums" to 3),
    so every length must be >= 0 and a sum that could overflow is first bounded in float64.
    O(n) vectorised.

    Raises:
        KnowledgeError: a negative length, or lengths that add up to 2**62 rows or more.
    """
    n = int(lengths.shape[0])
    if n == 0:
        return 0
    low, high = int(np.minimum.reduce(lengths)), int(np.maximum.reduce(lengths))
    if low < 0:
        at = int(np.argmin(lengths))
        raise KnowledgeError(
            f"Ragged lengths must be >= 0, got the negative length {low} for sample {at}; a "
            "length counts the rows (tokens) of one sample"
        )
    # the int64 sum is exact when it cannot overflow; otherwise bound it in float64 first
    exact = high <= _INT64_MAX // n or float(lengths.sum(dtype=np.float64)) < _ROWS_LIMIT
    total = int(np.add.reduce(lengths)) if exact else _ROWS_LIMIT
    if total >= _ROWS_LIMIT:
        raise KnowledgeError(
            f"Ragged lengths add up to 2**62 rows or more (the largest is {high}); they "
            "cannot describe real samples (an int64 sum of them may overflow)"
        )
    return total


def lengths_of_offsets(offsets: np.ndarray, rows: int) -> np.ndarray:
    """The sample lengths of int64 ``offsets`` (``[n + 1]``) into ``rows`` rows, checked.

    The offsets must start at >= 0, never decrease and end at <= ``rows``, as Arrow's
    ``large_list`` requires; sample ``i`` is rows ``offsets[i]:offsets[i + 1]``. Their
    differences are checked by :func:`lengths_total` (>= 0, an exact sum equal to
    ``offsets[-1] - offsets[0]``), which proves that no difference wrapped around in int64.
    O(n) vectorised.

    Raises:
        KnowledgeError: offsets that break one of these rules, naming the first bad one.
    """
    if offsets.ndim != 1 or offsets.shape[0] == 0:
        raise KnowledgeError(f"ragged offsets must be 1-D with n + 1 entries, got {offsets.shape}")
    first, last = int(offsets[0]), int(offsets[-1])
    if first < 0 or last > rows or last < first:
        raise KnowledgeError(
            f"ragged offsets run from {first} to {last}, outside the {rows} rows they index"
        )
    lengths = np.diff(offsets)
    try:
        total = lengths_total(lengths)
    except KnowledgeError:
        total = -1
    if total != last - first:
        falls = np.flatnonzero(offsets[1:] < offsets[:-1])
        if not falls.size:
            raise KnowledgeError(f"ragged offsets span {last - first} rows, 2**62 or more")
        at = int(falls[0])
        raise KnowledgeError(
            f"ragged offsets decrease at sample {at} ({int(offsets[at])} then "
            f"{int(offsets[at + 1])}); they must never decrease"
        )
    return lengths


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters (default 200).

    Bounded in nesting (3 levels) and items (8 per container), so that a hostile value (a
    header nested 1,000 levels deep, a list of a million items) costs neither a
    ``RecursionError`` nor a huge string.
    """
    return _SHORT.repr(value)[:limit]


def check_int(name: str, value: Any, *, minimum: int = 1, unit: str = "") -> int:
    """``value`` as an ``int`` if it is an integer (``int`` or a numpy integer, not a bool) of at
    least ``minimum``.

    Args:
        name: the argument's name, for the message.
        value: what the caller gave.
        minimum: the smallest accepted value (default 1: a positive integer).
        unit: what the number counts (``"samples"``, ``"batches"``), for the message.

    Raises:
        ConfigError: naming the argument, what was expected and what came.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok and value >= minimum:
        return int(value)
    if minimum == 1:
        want = "a positive integer"
    elif minimum == 0:
        want = "an integer >= 0"
    else:
        want = f"an integer >= {minimum}"
    what = f" ({unit})" if unit else ""
    got = repr(value) if ok else f"{type(value).__name__} {value!r:.100}"
    raise ConfigError(f"{name} must be {want}{what}, got {got}")


def check_port(name: str, value: Any, what: str = "0 = any free port") -> int:
    """``value`` as a TCP port number: an integer (``int`` or numpy) in 0..65535.

    Raises:
        ConfigError: naming the argument, what was expected (``what`` says what 0 means) and
            what came.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or not 0 <= value < 65536:
        raise ConfigError(f"{name} must be an integer in 0..65535 ({what}), got {value!r:.100}")
    return int(value)


def check_seconds(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """``value`` as a float number of seconds > 0 (``None`` accepted when ``allow_none``).

    Raises:
        ConfigError: not a finite number > 0.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


class Deadline:
    """A point in ``time.monotonic()`` time, from a timeout in seconds (``None``: no limit).

    Args:
        timeout: seconds from now, or ``None`` for a deadline that never passes.
    """

    __slots__ = ("at", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + max(0.0, float(timeout))

    def left(self) -> float:
        """Seconds left (``math.inf`` without a limit, never negative)."""
        if self.at is None:
            return math.inf
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.at is not None and time.monotonic() >= self.at

    def cap(self, seconds: float) -> float:
        """The seconds to wait now: what is left, at most ``seconds``."""
        return min(self.left(), seconds)


def wait_until(
    cond: threading.Condition,
    ready: Callable[[], bool],
    deadline: Deadline,
    *,
    poll: float = 0.5,
) -> bool:
    """With ``cond`` held, wait until ``ready()`` is true or ``deadline`` passes.

    ``ready`` is re-checked on every notification and at least every ``poll`` seconds (so a
    state change that nobody notified is still seen); it may raise to end the wait with an
    error (a peer that failed, a closed object). Returns whether ``ready()`` became true; the
    caller raises its own timeout error, which names what it waited for.
    """
    while not ready():
        left = deadline.left()
        if left <= 0:
            return False
        cond.wait(min(left, poll))
    return True


class Backoff:
    """Delays between retries: ``first`` seconds, doubling up to ``cap`` (0.05 s to 0.5 s).

    Args:
        first: the first delay, seconds (default 0.05).
        cap: the longest delay, seconds (default 0.5).
    """

    __slots__ = ("_cap", "_next")

    def __init__(self, first: float = 0.05, cap: float = 0.5) -> None:
        self._next = first
        self._cap = cap

    def sleep(self, deadline: Deadline, stop: threading.Event | None = None) -> bool:
        """Sleep for the next delay (never past ``deadline``); False if no time is left or
        ``stop`` was set meanwhile."""
        delay = deadline.cap(self._next)
        self._next = min(self._next * 2, self._cap)
        if delay <= 0:
            return False
        if stop is not None:
            return not stop.wait(delay)
        time.sleep(delay)
        return True
