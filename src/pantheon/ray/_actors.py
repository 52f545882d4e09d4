"""The Ray actors of a teacher pool: its registry (membership, by name) and its replicas.

Both are plain classes here, made Ray actors by :mod:`._pool` with ``ray.remote(...)``, so
that importing this module needs no Ray cluster. Ray moves their constructor arguments with
its own serialization (the user's service factory is a Ray-serialized callable); the
knowledge itself never goes through Ray: a replica serves it with a :class:`~pantheon.Teacher`
on its own port.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import ConfigError, PantheonError, TeacherError
from .._teacher import Teacher
from ._split import block_of, split_reader

__all__ = ["Registry", "Replica"]

log = logging.getLogger("pantheon")


class Registry:
    """A pool's membership: the address of each replica slot, its mode and its block size.

    Replicas register themselves from their constructors (so a replica that Ray restarted
    on another port is found again); students and ``TeacherPool.get`` ask it.
    """

    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        self._spec = dict(spec)  # how replicas are made (TeacherPool's arguments)
        self.mode: str | None = None
        self.block = 0
        self.slots: list[str | None] = []
        self.handles: list[Any] = []  # the replicas' actor handles, slot order
        self.active = 0
        self.starts: list[int] = []  # constructor runs per slot: 1 + restarts

    def spec(self) -> dict[str, Any]:
        """The pool's settings: the service factory and the replicas' actor options."""
        return dict(self._spec)

    def add(self, handles: list[Any]) -> int:
        """Slots for new replicas; returns the first slot."""
        first = len(self.slots)
        self.slots += [None] * len(handles)
        self.starts += [0] * len(handles)
        self.handles += handles
        self.active = len(self.slots)
        return first

    def retire(self, count: int) -> list[Any]:
        """Keep the first ``count`` slots; return the handles of the others (to kill)."""
        gone = self.handles[count:]
        self.slots = self.slots[:count]
        self.starts = self.starts[:count]
        self.handles = self.handles[:count]
        self.active = count
        return gone

    def register(self, slot: int, address: str, mode: str, block: int) -> None:
        """Replica ``slot`` serves at ``address``.

        Raises:
            ConfigError: a mode or block size other than the other replicas'.
        """
        if slot >= len(self.slots):
            raise ConfigError(f"pool {self.name!r} has no slot {slot} (it was scaled down)")
        if self.mode is not None and (mode, block) != (self.mode, self.block):
            raise ConfigError(
                f"replica {slot} of pool {self.name!r} serves {mode!r} with blocks of {block}, "
                f"the others {self.mode!r} with blocks of {self.block}: every replica must "
                "build the same service"
            )
        self.mode, self.block = mode, block
        self.slots[slot] = address
        self.starts[slot] += 1

    def unregister(self, slot: int, address: str) -> None:
        """Replica ``slot`` stopped serving at ``address``."""
        if slot < len(self.slots) and self.slots[slot] == address:
            self.slots[slot] = None

    def members(self) -> dict[str, Any]:
        """``{"mode", "replicas", "active", "block", "starts"}`` (``mode`` None before the
        first replica registered)."""
        return {
            "mode": self.mode,
            "replicas": list(self.slots),
            "active": self.active,
            "block": self.block,
            "starts": list(self.starts),
        }

    def replicas(self) -> list[Any]:
        """The replicas' actor handles, slot order."""
        return list(self.handles)


class Replica:
    """One replica: builds its model from ``service()`` and serves it on a free port.

    Args:
        registry: the pool's registry actor.
        pool: the pool's name. slot: this replica's slot. replicas: the pool's replicas
            (a same-order pool splits rounds between them).
        service: a factory returning the keyword arguments of
            :meth:`~pantheon.Teacher.start_knowledge_service`.
        host: the interface to bind. token: the shared secret (None: ``PANTHEON_TOKEN``).
        split_samples: same-order: samples per block (default: the reader's batch size).
        teacher_options: more keyword arguments of :class:`~pantheon.Teacher`.
    """

    def __init__(
        self,
        registry: Any,
        pool: str,
        slot: int,
        replicas: int,
        service: Callable[[], Mapping[str, Any]],
        host: str,
        token: str | bytes | None,
        split_samples: int | None,
        teacher_options: Mapping[str, Any],
    ) -> None:
        import ray

        kwargs = dict(_service_kwargs(service, pool))
        reader = kwargs.setdefault("reader_config", None)
        mode, block = "queries", 0
        if reader is not None:
            mode, block = "rounds", block_of(reader, split_samples)
            if replicas > 1:
                kwargs["reader_config"] = split_reader(
                    kwargs["feed_list"], reader, slot, replicas, block
                )
        self.slot = slot
        self.error: str | None = None
        bind = ray.util.get_node_ip_address() if host == "node" else host
        self.teacher = Teacher(out_port=0, host=bind, token=token, **dict(teacher_options))
        self.address = self.teacher.address
        self._thread = threading.Thread(
            target=self._serve, args=(kwargs, mode), name="pantheon-replica", daemon=True
        )
        self._thread.start()
        ray.get(registry.register.remote(slot, self.address, mode, block))
        log.info("pool %s: replica %d serves %s at %s", pool, slot, mode, self.address)

    def _serve(self, kwargs: dict[str, Any], mode: str) -> None:
        try:
            while True:  # query mode: serve the next students once these said goodbye
                self.teacher.start_knowledge_service(**kwargs)
                if mode != "queries":
                    return
        except PantheonError as exc:
            if "closed" not in str(exc).lower():
                self.error = str(exc)
                log.error("replica %d: the knowledge service failed: %s", self.slot, exc)
        except Exception as exc:  # the user's program: kept to be reported by ready()
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("replica %d: the knowledge service failed: %s", self.slot, self.error)

    def ready(self) -> str:
        """The address this replica serves at.

        Raises:
            TeacherError: the service failed (its message).
        """
        if self.error is not None:
            raise TeacherError(f"replica {self.slot}: {self.error}")
        return self.address

    def pid(self) -> int:
        """This replica's process id."""
        return os.getpid()

    def close(self) -> None:
        """Stop serving."""
        self.teacher.close()


def _service_kwargs(service: Callable[[], Mapping[str, Any]], pool: str) -> Mapping[str, Any]:
    if not callable(service):
        raise ConfigError(
            f"pool {pool!r}: service must be a picklable factory returning the keyword "
            f"arguments of start_knowledge_service, got {type(service).__name__}"
        )
    kwargs = service()
    if not isinstance(kwargs, Mapping) or not {"feed_list", "schema", "program"} <= set(kwargs):
        raise ConfigError(
            f"pool {pool!r}: service() must return a dict of start_knowledge_service keyword "
            "arguments with at least feed_list, schema, program (and reader_config: None for "
            f"query mode, or a reader for same-order mode), got {kwargs!r:.200}"
        )
    return kwargs
