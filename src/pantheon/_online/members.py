"""An online teacher whose replicas are the members of a named pool, followed as they change.

A :class:`Follow` gives an :class:`~.source.OnlineSource` two things a fixed list of
addresses cannot:

* **Reconnecting by slot.** A link that went down is reconnected to the address its replica
  slot has *now* (Ray restarts a killed replica on another port): each attempt asks the
  pool's resolver (:mod:`.resolve`) and tries that address for at most
  :data:`ATTEMPT_SECONDS`, until the source's timeout. A slot that left the pool (scaled
  down) is retired instead: its queries go to the others, and it is not an error.
* **Joining.** A watcher thread asks for the membership every ``poll`` seconds and connects a
  link to every slot that joined (``pool.scale(n)``); queries spread over it at once.

The protocol's exactly-once rules are the machine's (:mod:`.student_machine`): a query lost
with a replica is sent again elsewhere and a duplicate answer is dropped; a round is
re-subscribed from the first sample not held.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Protocol

from .._errors import PantheonError, TeacherError
from .._util import Deadline
from .link import Link
from .resolve import Membership, Resolver
from .student_machine import Action, StudentMachine

__all__ = ["ATTEMPT_SECONDS", "Follow"]

log = logging.getLogger("pantheon")

ATTEMPT_SECONDS = 1.0
"""Seconds one connection attempt to a replica's current address lasts before the pool's
membership is asked again."""


class Followed(Protocol):
    """What a :class:`Follow` needs of the source it serves (an ``OnlineSource``)."""

    name: str
    timeout: float
    cond: threading.Condition
    stopped: threading.Event
    machine: StudentMachine
    links: list[Link]

    def queue(self, actions: list[Action]) -> None: ...

    def flush(self) -> None: ...

    def up(self, link: Link) -> None: ...

    def count_reconnect(self) -> None: ...


class Follow:
    """Follow the members of a pool (see the module docstring).

    Args:
        resolver: the pool's resolver.
        slot: the source has one link, to this replica slot (a same-order pool's replica);
            None: link ``i`` is slot ``i`` and slots that join get links.
        poll: seconds between two membership checks of the watcher (default 0.5).
    """

    def __init__(self, resolver: Resolver, *, slot: int | None = None, poll: float = 0.5) -> None:
        self.resolver = resolver
        self.slot = slot
        self.poll = poll
        self._thread: threading.Thread | None = None

    def slot_of(self, link: int) -> int:
        """The replica slot of link ``link``."""
        return self.slot if self.slot is not None else link

    def start(self, source: Followed) -> None:
        """Start the watcher (a source with one fixed slot has none)."""
        if self.slot is not None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._watch, args=(source,), name="pantheon-pool-watch", daemon=True
        )
        self._thread.start()

    def _members(self, seconds: float) -> Membership | None:
        try:
            return self.resolver.members(max(0.1, seconds))
        except PantheonError as exc:
            log.debug("%s: membership not available: %s", self.resolver.name, exc)
            return None

    def reconnect(self, source: Followed, index: int, *, join: bool = False) -> None:
        """Reconnect link ``index`` to its slot's current address (a reconnection thread;
        ``join``: the first connection of a replica that joined, not counted as a
        reconnection)."""
        link = source.links[index]
        deadline = Deadline(source.timeout)
        last: str | None = None
        while not source.stopped.is_set():
            members = self._members(min(5.0, deadline.left()))
            slot = self.slot_of(index)
            if members is not None and slot >= members.active:
                log.info("%s: replica %d left %s", source.name, slot, self.resolver.name)
                with source.cond:
                    source.queue(source.machine.retire(index))
                    source.cond.notify_all()
                source.flush()
                return
            address = members.address(slot) if members is not None else None
            if address is not None:
                if address != link.address:
                    log.info("%s: replica %d is now at %s", source.name, slot, address)
                    link.address = address
                try:
                    link.connect(Deadline(min(ATTEMPT_SECONDS, deadline.left())))
                except TeacherError as exc:
                    last = str(exc)  # not the exception: its traceback would hold the callers
                except PantheonError as exc:  # a wrong token, another protocol: final
                    self._failed(source, index, exc)
                    return
                else:
                    source.up(link)
                    if not join:  # counted once the machine uses the link again
                        source.count_reconnect()
                    return
            if deadline.expired:
                why = f"last error: {last}" if last else "it has no address in the pool"
                self._failed(
                    source,
                    index,
                    TeacherError(
                        f"replica {slot} of {self.resolver.name} did not come back within "
                        f"{source.timeout:g} s ({why})"
                    ),
                )
                return
            source.stopped.wait(min(0.2, deadline.left()))

    @staticmethod
    def _failed(source: Followed, index: int, error: BaseException) -> None:
        with source.cond:
            source.machine.reconnect_failed(index, error)
            source.cond.notify_all()

    def _watch(self, source: Followed) -> None:
        while not source.stopped.wait(self.poll):
            members = self._members(5.0)
            if members is None:
                continue
            joined: collections.deque[int] = collections.deque()
            with source.cond:
                if source.stopped.is_set():
                    return
                for slot in range(len(source.links), members.active):
                    address = members.replicas[slot]
                    if address is None:
                        break  # it joins once it serves; later slots wait for it
                    index = source.machine.add_link()
                    source.links.append(Link(_owner(source), address, index))
                    joined.append(index)
            for index in joined:
                log.info("%s: replica %d joined at %s", source.name, index, members.replicas[index])
                threading.Thread(
                    target=self.reconnect, args=(source, index), kwargs={"join": True}, daemon=True
                ).start()


def _owner(source: Followed) -> Any:
    """The source as a link's owner (an ``OnlineSource`` is one)."""
    return source
