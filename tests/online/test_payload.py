"""The teacher's counters, added to from many sender threads at once."""

from __future__ import annotations

import sys
import threading

from pantheon._online.payload import Counters


def test_counters_lose_no_update_from_threads_adding_at_once() -> None:
    """``stats[key] += n`` from the sender threads of several students could lose updates
    (a read, an add and a write, with a thread switch between)."""
    counters = Counters("messages", "bytes")

    def send_many() -> None:
        for _ in range(20_000):
            counters.add(messages=1, bytes=3)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two bytecodes
    try:
        threads = [threading.Thread(target=send_many) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(switch)
    assert counters.snapshot() == {"messages": 80_000, "bytes": 240_000}
