"""Requests of clients that came before the teacher serves (between two serve calls): held,
bounded, and handed to the machine of the next call, also the acknowledgements (ROUND_DONE,
BYE) of a student that left meanwhile, so that a student which finished its round while its
teacher was restarting is counted once the new teacher serves."""

from __future__ import annotations

import logging
import time

from .._errors import ProtocolError
from .._wire import Message, MsgType
from .fanout import Action, ProtocolViolation, Send
from .messages import Bye, Event, RoundDone, header
from .payload import decode_plain
from .peer import Peer, log_round
from .queries import PendingQuery, QueryBatcher, stopped_answering
from .teacher_machine import TeacherMachine

__all__ = ["EarlyRequests"]

log = logging.getLogger("pantheon")

EARLY_REQUESTS = 64
"""Requests a client may send before the teacher starts serving."""


class EarlyRequests:
    """The requests held for the next serve call, per client (see the module docstring)."""

    def __init__(self) -> None:
        self._held: dict[int, list[tuple[Message, Event]]] = {}
        self._gone: list[tuple[Peer, list[tuple[Message, Event]]]] = []

    def hold(self, peer: Peer, msg: Message, event: Event) -> None:
        """Keep a request of ``peer`` until the teacher serves.

        Raises:
            ProtocolError: ``peer`` sent more than :data:`EARLY_REQUESTS` of them.
        """
        held = self._held.setdefault(peer.cid, [])
        if len(held) >= EARLY_REQUESTS:
            raise ProtocolError(
                f"{peer.name} sent {EARLY_REQUESTS} requests before the teacher started "
                "serving; wait for the teacher"
            )
        held.append((msg, event))

    def gone(self, peer: Peer, serving: bool) -> None:
        """``peer`` closed; while nothing is served, its acknowledgements are kept."""
        held = self._held.pop(peer.cid, [])
        acks: list[tuple[Message, Event]] = [
            (m, e) for m, e in held if isinstance(e, (RoundDone, Bye))
        ]
        if not serving and any(isinstance(e, RoundDone) for _, e in acks):
            self._gone.append((peer, acks))

    def replay(
        self,
        machine: TeacherMachine,
        peers: dict[int, Peer],
        batcher: QueryBatcher | None,
        acks: set[tuple[str, int]],
    ) -> list[Action]:
        """Hand ``machine`` the clients connected now and what they sent, then the
        acknowledgements of those that left (each round logged as :func:`.peer.log_round`
        does, ``acks`` the rounds logged already); returns the machine's actions.

        The held queries go to ``batcher`` together, in their order, after the machine took
        them: :meth:`.QueryBatcher.submit_held` never waits, since this runs under the
        teacher's lock, which answering a query takes. If the batcher stopped, each of
        their students is told its query failed."""
        actions: list[Action] = []
        queries: list[PendingQuery] = []
        now = time.monotonic()
        for cid, peer in list(peers.items()):
            actions += machine.connect(cid, peer.hello, peer.peer)
            for msg, event in self._held.pop(cid, []):
                try:
                    actions += machine.receive(cid, event, now)
                    log_round(peer, event, machine, acks)
                except ProtocolViolation as exc:
                    log.warning("closing %s: %s", peer.name, exc)
                    peer.close()
                    continue
                if msg.type == MsgType.QUERY and batcher is not None:
                    feeds = decode_plain(msg.header, msg.frames)
                    queries.append(PendingQuery(cid, msg.header["qid"], feeds))
        if batcher is not None and queries and not batcher.submit_held(queries):
            actions += [Send(q.cid, *header(stopped_answering(q.qid))) for q in queries]
        for peer, gone_acks in self._gone:
            actions += machine.connect(peer.cid, peer.hello, peer.peer)
            for _, event in gone_acks:
                try:
                    actions += machine.receive(peer.cid, event, now)
                    log_round(peer, event, machine, acks)
                except ProtocolViolation as exc:
                    log.warning("ignoring a request of %s, which left: %s", peer.name, exc)
            actions += machine.disconnect(peer.cid)
        self._held.clear()
        self._gone.clear()
        return actions
