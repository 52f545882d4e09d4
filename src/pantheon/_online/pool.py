"""A named teacher pool (``in_address="ray://NAME"``) as the student sees it.

:class:`PoolSource` resolves the pool (:mod:`.resolve`) when the student starts, then:

* **query mode**: one :class:`~.source.OnlineSource` with a link per replica, following the
  pool's membership (:mod:`.members`); queries go to the least busy replica, fail over, and
  are answered exactly once.
* **same-order mode** (``"rounds"``): replica ``j`` of ``R`` predicts blocks ``j, j + R,
  j + 2R, ...`` of ``B`` samples of every round (its own *sub-round*, numbered from 0); the
  student holds one source per replica and puts the blocks back in reader order
  (:class:`SplitRound`). Rank ``r`` of ``W`` asks each replica for its rank-``r`` shard of the
  sub-round; with ``W`` dividing ``B`` these are exactly the samples ``r, r + W, ...`` of the
  round, renumbered to their round ids: the round arrives in order, ~R times as fast.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._chunks import slice_chunk
from .._errors import ConfigError, PantheonTimeoutError, ProtocolError
from .._knowledge import Chunk, Description
from .._util import Deadline
from .members import Follow
from .resolve import Membership, Resolver, open_resolver, scheme_of
from .source import OnlineSource

__all__ = ["PoolSource", "SplitRound", "open_source"]


class SplitRound:
    """One round of a same-order pool for one rank: the replicas' blocks in reader order.

    Args:
        streams: the rounds of the replicas' sources, slot order, each opened at the position
            :meth:`positions` gave.
        block: samples per block (``B``); ``world`` must divide it.
        rank / world: this student's shard.
        start: this rank's position in the round (samples already handed out).
    """

    def __init__(self, streams: list[Any], block: int, rank: int, world: int, start: int) -> None:
        self._streams = streams
        self._block = block
        self._rank = rank
        self._world = world
        self._per_block = block // world
        self._g, self._off = divmod(start, self._per_block)
        self._held: list[Chunk | None] = [None] * len(streams)
        self._ended = False

    @staticmethod
    def positions(start: int, replicas: int, block: int, world: int) -> list[int]:
        """Where each replica's sub-round starts for a rank at position ``start``."""
        per = block // world
        g, off = divmod(start, per)
        out = []
        for j in range(replicas):
            before = max(0, -(-(g - j) // replicas))  # blocks of replica j before block g
            out.append(before * per + (off if g % replicas == j else 0))
        return out

    def _global_ids(self, j: int, ids: np.ndarray) -> np.ndarray:
        b, r = self._block, len(self._streams)
        out: np.ndarray = (ids // b) * (r * b) + j * b + ids % b
        return out

    def next_chunk(self, timeout: float, stop: threading.Event | None = None) -> Chunk | None:
        """The next samples of the round in order (from one replica), or None at its end."""
        if self._ended:
            return None
        j = self._g % len(self._streams)
        head = self._held[j]
        if head is None:
            head = self._streams[j].next_chunk(timeout, stop)
            if head is None:  # replica j's sub-round ended: so did the round
                self._ended = True
                held = [i for i, c in enumerate(self._held) if c is not None]
                if held:
                    raise ProtocolError(
                        f"replica {j} ended its part of the round at block {self._g}, but "
                        f"replica {held[0]} sent samples of later blocks: the replicas do not "
                        "split the same reader"
                    )
                return None
        take = min(self._per_block - self._off, len(head.ids))
        part = slice_chunk(head, 0, take)
        self._held[j] = slice_chunk(head, take, len(head.ids)) if take < len(head.ids) else None
        self._off += take
        if self._off == self._per_block:
            self._g, self._off = self._g + 1, 0
        return Chunk(self._global_ids(j, np.asarray(part.ids)), part.data)

    def known_samples(self) -> int:
        """Samples of the round known to exist in order: whole once every replica ended."""
        counts = [int(s.known_samples()) for s in self._streams]
        r, b = len(counts), self._block
        first_gap = min((c // b) * r + j for j, c in enumerate(counts))
        total = sum(counts)
        return total if self._ended else min(total, first_gap * b)

    def close(self) -> None:
        for stream in self._streams:
            stream.close()


class PoolSource:
    """A named pool of replicas of one teacher (see the module docstring).

    Args:
        index: the teacher id.
        resolver: the pool's resolver (from :func:`~.resolve.open_resolver`).
        options: the keyword arguments of :class:`~.source.OnlineSource` (token, timeout,
            group, rank, world_size, ...).
    """

    def __init__(self, index: int, resolver: Resolver, options: Mapping[str, Any]) -> None:
        self.index = index
        self.resolver = resolver
        self.name = f"teacher {index} ({resolver.name})"
        self._options = dict(options)
        self._rank = int(self._options.get("rank", 0))
        self._world = int(self._options.get("world_size", 1))
        self._members: Membership | None = None
        self._sources: list[OnlineSource] = []
        self._closed = False

    # ------------------------------------------------------------------ start

    def _wait_members(self, timeout: float) -> Membership:
        deadline = Deadline(timeout)
        while True:
            members = self.resolver.members(max(0.1, deadline.cap(10.0)))
            slots = [members.address(i) for i in range(members.active)]
            if slots and (all(slots) if members.mode == "rounds" else slots[0]):
                return members
            if deadline.expired:
                raise PantheonTimeoutError(
                    f"{self.name}: no replica of the pool served within {timeout:g} s "
                    f"(members now: {list(members.replicas[: members.active])}); are its "
                    "actors starting (building their models) or failing? See the Ray logs"
                )
            time.sleep(min(0.1, deadline.left()))

    def start(self, timeout: float) -> None:
        """Resolve the pool and connect to its replicas (waits ``timeout`` s for them)."""
        if self._sources:
            return
        members = self._members = self._wait_members(timeout)
        if members.mode == "queries":
            serving: list[str] = []  # slots 0, 1, ... up to the first not serving yet
            for slot in range(members.active):
                address = members.address(slot)
                if address is None:
                    break  # it joins later, through the Follow's watcher
                serving.append(address)
            source = OnlineSource(
                self.index,
                serving,
                follow=Follow(self.resolver),
                name=self.name,
                **self._options,
            )
            self._sources = [source]
        else:
            if members.active > 1 and members.block % self._world:
                raise ConfigError(
                    f"{self.name} splits rounds into blocks of {members.block} samples between "
                    f"{members.active} replicas; a group of world_size {self._world} needs "
                    "blocks a multiple of it: make the reader's batch size (or the pool's "
                    "split_samples) a multiple of the world size"
                )
            for slot in range(members.active):
                address = members.address(slot)
                assert address is not None
                self._sources.append(
                    OnlineSource(
                        self.index,
                        address,
                        follow=Follow(self.resolver, slot=slot),
                        name=f"{self.name} replica {slot}",
                        **self._options,
                    )
                )
        for source in self._sources:
            source.start(timeout)

    def _opened(self) -> list[OnlineSource]:
        if not self._sources:
            raise ConfigError(f"{self.name} is not connected: call Student.start() first")
        return self._sources

    @property
    def split(self) -> bool:
        """Whether the replicas split rounds (same-order mode with several replicas)."""
        return len(self._sources) > 1

    # ------------------------------------------------------------------ Source protocol

    def desc(self, timeout: float) -> Description:
        return self._opened()[0].desc(timeout)

    def fingerprints(self) -> dict[str, str]:
        return self._sources[0].fingerprints() if self._sources else {}

    def open_round(self, round_index: int, start_sample: int) -> Any:
        sources = self._opened()
        if not self.split:
            return sources[0].open_round(round_index, start_sample)
        assert self._members is not None
        block = self._members.block
        starts = SplitRound.positions(start_sample, len(sources), block, self._world)
        streams = [s.open_round(round_index, p) for s, p in zip(sources, starts, strict=True)]
        return SplitRound(streams, block, self._rank, self._world, start_sample)

    def ack_round(self, round_index: int) -> None:
        for source in self._opened():
            source.ack_round(round_index)

    def submit(self, qid: int, query: Chunk) -> None:
        sources = self._opened()
        if self._members is not None and self._members.mode == "rounds":
            raise ConfigError(
                f"{self.name} serves rounds of a reader (same-order mode), not queries: "
                "iterate get_knowledge_generator() without queries=, or start the pool with "
                "a service whose reader_config is None"
            )
        sources[0].submit(qid, query)

    def answer(self, qid: int, timeout: float, stop: threading.Event | None = None) -> Chunk:
        return self._opened()[0].answer(qid, timeout, stop)

    def forget(self, qids: list[int]) -> None:
        self._opened()[0].forget(qids)

    def send_user(self, data: Any, timeout: float) -> None:
        """Send a user message to every replica."""
        for source in self._opened():
            source.send_user(data, timeout)

    def recv_user(self, timeout: float) -> Any:
        """The next user message of the first replica."""
        return self._opened()[0].recv_user(timeout)

    def stats(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        for source in self._sources:
            for key, value in source.stats().items():
                if isinstance(value, Mapping):
                    out[key] = {**out.get(key, {}), **value}
                else:
                    out[key] = out.get(key, 0) + value
        return out

    def close(self, goodbye: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        for source in self._sources:
            source.close(goodbye)


def open_source(
    index: int, address: str | Sequence[str], **options: Any
) -> OnlineSource | PoolSource:
    """The source of an online teacher: an :class:`OnlineSource` for ``"host:port"``
    addresses, a :class:`PoolSource` for a pool's ``"scheme://NAME"`` (given alone).

    ``options`` are the keyword arguments of :class:`OnlineSource`.

    Raises:
        ConfigError: a pool address among others, or a scheme nobody registered.
    """
    addresses = [address] if isinstance(address, str) else list(address)
    named = [a for a in addresses if scheme_of(a)]
    if not named:
        return OnlineSource(index, address, **options)
    if len(addresses) != 1:
        raise ConfigError(
            f"in_address {named[0]!r} names a whole pool of replicas: give it alone, not in a "
            "list with other addresses"
        )
    return PoolSource(index, open_resolver(named[0]), options)
