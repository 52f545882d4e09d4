"""Teacher pools on a Ray cluster: replicas as Ray actors, found by name, restarted by Ray.

A pool is a *registry* actor named ``pantheon.pool.NAME`` in the Ray namespace
``"pantheon"`` (so that any job of the cluster finds it) and ``replicas`` replica actors. The
registry holds the membership: each replica registers its address from its constructor, so
a replica that Ray restarted (``max_restarts``) on another port is found again; students
resolve ``ray://NAME`` through :class:`RayResolver` and follow the changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import ray

from .._errors import ConfigError, PantheonTimeoutError, TeacherError
from .._online import Membership
from .._util import check_int, check_seconds
from ._actors import Registry, Replica

__all__ = ["NAMESPACE", "RayResolver", "TeacherPool"]

NAMESPACE = "pantheon"
"""The Ray namespace of every pool's actors."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_PLACEMENTS = ("SPREAD", "DEFAULT")


def _registry_name(name: str) -> str:
    return f"pantheon.pool.{name}"


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ConfigError(
            f"a pool name is 1-100 letters, digits, '_', '.', '-' (starting with a letter or "
            f"digit), got {name!r}"
        )
    return name


def _connected(what: str) -> None:
    if not ray.is_initialized():
        raise ConfigError(
            f"{what} needs this process connected to a Ray cluster: call ray.init() (or "
            "ray.init(address='auto') to join a running one) first; Ray actors and Ray Train "
            "workers are connected already"
        )


class TeacherPool:
    """A pool of replicas of one teacher, as Ray actors serving over Pantheon's wire.

    Each replica calls ``service()`` in its constructor (building its model there, so that
    a replica restarted by Ray comes back whole), starts a :class:`~pantheon.Teacher` on a
    free port and serves ``start_knowledge_service(**service())``: query mode when its
    ``reader_config`` is None (students' queries go to the least busy replica), same-order
    mode with a reader (the replicas split each round: replica ``j`` of ``R`` predicts blocks
    ``j, j + R, ...`` of ``split_samples`` samples, default the reader's ``batch_size``).

    Students register ``in_address="ray://NAME"``. The actors are job-scoped by default:
    they end with the job (driver) that created the pool; ``detached=True`` keeps them
    until :meth:`close`.

    Args:
        name: the pool's name (letters, digits, ``_.-``), unique in the cluster.
        service: a picklable factory (a module-level function) returning the keyword
            arguments of :meth:`~pantheon.Teacher.start_knowledge_service`.
        replicas: replica actors to start (default 1).
        num_cpus / num_gpus: resources of each replica actor (defaults 1 and 0).
        placement: ``"SPREAD"`` (default: replicas on as many nodes as possible),
            ``"DEFAULT"`` (Ray's default scheduling), or a ``ray.util.placement_group``
            (replica ``j`` in bundle ``j`` modulo its bundles).
        max_restarts: times Ray restarts a dead replica (default -1: always).
        token: the shared secret of the replicas' teachers (default ``PANTHEON_TOKEN``);
            students pass the same one (``Student(token=...)``).
        host: the interface replicas bind: ``"127.0.0.1"`` (default, a single-node cluster),
            ``"node"`` (the node's IP address, for students on other nodes; needs a token),
            or an address.
        split_samples: same-order: samples per block (default: the reader's batch size;
            required for readers without one).
        detached: keep the actors after the creating job ends (default False).
        teacher_options: more :class:`~pantheon.Teacher` keyword arguments (``timeout``,
            ``max_students``, ``codecs``, ...).
        timeout: seconds to wait for every replica to serve (default 300).

    Raises:
        ConfigError: bad arguments, no Ray connection, a pool of that name exists.
        TeacherError: a replica failed to start (its error).
        PantheonTimeoutError: the replicas did not serve within ``timeout``.
    """

    def __init__(
        self,
        name: str,
        service: Callable[[], Mapping[str, Any]],
        *,
        replicas: int = 1,
        num_cpus: float = 1,
        num_gpus: float = 0,
        placement: Any = "SPREAD",
        max_restarts: int = -1,
        token: str | bytes | None = None,
        host: str = "127.0.0.1",
        split_samples: int | None = None,
        detached: bool = False,
        teacher_options: Mapping[str, Any] | None = None,
        timeout: float = 300.0,
    ) -> None:
        _connected("TeacherPool")
        self.name = _check_name(name)
        if not callable(service):
            raise ConfigError(
                f"service must be a factory (a callable), got {type(service).__name__}"
            )
        count = check_int("replicas", replicas, minimum=0, unit="replicas")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < -1:
            raise ConfigError(f"max_restarts must be -1 (always) or >= 0, got {max_restarts!r}")
        if isinstance(placement, str) and placement not in _PLACEMENTS:
            raise ConfigError(
                f"placement must be one of {list(_PLACEMENTS)} or a placement group, got "
                f"{placement!r}"
            )
        for what, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{what} must be a number >= 0, got {value!r}")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"host must be '127.0.0.1', 'node' or an address, got {host!r}")
        spec = {
            "service": service,
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "placement": placement,
            "max_restarts": max_restarts,
            "token": token,
            "host": host,
            "split_samples": split_samples,
            "detached": bool(detached),
            "teacher_options": dict(teacher_options or {}),
        }
        self._timeout = float(check_seconds("timeout", timeout) or 300.0)
        try:
            ray.get_actor(_registry_name(self.name), namespace=NAMESPACE)
        except ValueError:
            pass
        else:
            raise ConfigError(
                f"a pool named {self.name!r} exists in this Ray cluster: use "
                f"TeacherPool.get({self.name!r}), close it, or choose another name"
            )
        self._registry = (
            ray.remote(Registry)
            .options(
                name=_registry_name(self.name),
                namespace=NAMESPACE,
                lifetime="detached" if detached else None,
                num_cpus=0,
            )
            .remote(self.name, spec)
        )
        self._closed = False
        try:
            self._start(0, count)
        except BaseException:
            self.close()
            raise

    @classmethod
    def get(cls, name: str, *, timeout: float = 300.0) -> TeacherPool:
        """The pool named ``name``, from any process of the cluster.

        Raises:
            ConfigError: no Ray connection, or no pool of that name.
        """
        _connected("TeacherPool.get")
        try:
            registry = ray.get_actor(_registry_name(_check_name(name)), namespace=NAMESPACE)
        except ValueError:
            raise ConfigError(
                f"no pool named {name!r} in this Ray cluster (namespace {NAMESPACE!r}); create "
                "it with TeacherPool(name, service, ...)"
            ) from None
        pool = cls.__new__(cls)
        pool.name, pool._registry, pool._closed = name, registry, False
        pool._timeout = float(check_seconds("timeout", timeout) or 300.0)
        return pool

    # ------------------------------------------------------------------ replicas

    def _call(self, ref: Any, what: str) -> Any:
        try:
            return ray.get(ref, timeout=self._timeout)
        except ray.exceptions.GetTimeoutError:
            raise PantheonTimeoutError(
                f"pool {self.name!r}: {what} did not finish within {self._timeout:g} s; are "
                "there resources for its replicas (ray status)? Raise TeacherPool(timeout=...)"
            ) from None
        except ray.exceptions.RayError as exc:
            raise TeacherError(f"pool {self.name!r}: {what} failed: {exc}") from None

    def _start(self, first: int, count: int) -> None:
        """Start replicas for slots ``first .. first+count-1`` and wait until they serve."""
        if count == 0:
            return
        spec = self._call(self._registry.spec.remote(), "reading its settings")
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "lifetime": "detached" if spec["detached"] else None,
            "max_restarts": spec["max_restarts"],
            "num_cpus": spec["num_cpus"],
            "num_gpus": spec["num_gpus"],
        }
        total = first + count
        handles = []
        for slot in range(first, total):
            placement = spec["placement"]
            if isinstance(placement, str):
                options["scheduling_strategy"] = placement
            else:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement, placement_group_bundle_index=slot % placement.bundle_count
                )
            handles.append(
                ray.remote(Replica)
                .options(**options)
                .remote(
                    self._registry,
                    self.name,
                    slot,
                    total,
                    spec["service"],
                    spec["host"],
                    spec["token"],
                    spec["split_samples"],
                    spec["teacher_options"],
                )
            )
        self._call(self._registry.add.remote(handles), "adding replicas")
        self._call([h.ready.remote() for h in handles], f"starting {count} replica(s)")

    def addresses(self) -> list[str]:
        """The addresses (``"host:port"``) the replicas serve at now, slot order."""
        members = self.members()
        return [a for a in members.replicas[: members.active] if a is not None]

    def members(self) -> Membership:
        """The pool's membership now (see :class:`pantheon._online.Membership`)."""
        return _membership(self._call(self._registry.members.remote(), "reading its members"))

    def starts(self) -> list[int]:
        """How many times each slot's replica was constructed: 1, plus its restarts."""
        return list(self._call(self._registry.members.remote(), "reading its members")["starts"])

    def pids(self) -> list[int]:
        """The process ids of the replicas, slot order (each on its node)."""
        handles = self._call(self._registry.replicas.remote(), "listing its replicas")
        return list(self._call([h.pid.remote() for h in handles], "asking process ids"))

    def scale(self, replicas: int) -> None:
        """Run ``replicas`` replicas: start new ones (waiting until they serve; students
        connect to them on their own), or stop the last ones (their students' queries go to
        the others).

        Raises:
            ConfigError: a same-order pool (its replicas split rounds by their number: start
                another pool instead).
        """
        count = check_int("replicas", replicas, minimum=0, unit="replicas")
        members = self.members()
        if count == members.active:
            return
        if members.mode == "rounds" and members.active:
            raise ConfigError(
                f"pool {self.name!r} serves same-order rounds split between its "
                f"{members.active} replicas; their number cannot change while it serves: "
                "close it and start a pool with replicas={count}"
            )
        if count > members.active:
            self._start(members.active, count - members.active)
            return
        for handle in self._call(self._registry.retire.remote(count), "removing replicas"):
            ray.kill(handle, no_restart=True)

    def close(self) -> None:
        """Stop every replica and the registry (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            handles = ray.get(self._registry.retire.remote(0), timeout=self._timeout)
        except ray.exceptions.RayError:
            handles = []
        for handle in handles:
            ray.kill(handle, no_restart=True)
        ray.kill(self._registry, no_restart=True)

    def __enter__(self) -> TeacherPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TeacherPool({self.name!r})"


def _membership(raw: Mapping[str, Any]) -> Membership:
    replicas = tuple(raw["replicas"])
    if raw["mode"] is None:  # no replica registered yet
        return Membership("queries", tuple(None for _ in replicas), raw["active"])
    return Membership(raw["mode"], replicas, raw["active"], raw["block"])


class RayResolver:
    """``ray://NAME``: the members of the pool ``NAME``, from its registry actor."""

    def __init__(self, address: str) -> None:
        self.name = address
        self.pool = _check_name(address.split("://", 1)[1])
        _connected(f"in_address={address!r}")
        self._registry: Any = None

    def members(self, timeout: float) -> Membership:
        if self._registry is None:
            try:
                self._registry = ray.get_actor(_registry_name(self.pool), namespace=NAMESPACE)
            except ValueError:
                raise TeacherError(
                    f"{self.name}: no pool named {self.pool!r} in this Ray cluster; start it "
                    "with pantheon.ray.TeacherPool"
                ) from None
        try:
            return _membership(ray.get(self._registry.members.remote(), timeout=timeout))
        except ray.exceptions.GetTimeoutError:
            raise PantheonTimeoutError(
                f"{self.name}: the pool's registry did not answer within {timeout:g} s"
            ) from None
        except ray.exceptions.RayError as exc:
            self._registry = None
            raise TeacherError(f"{self.name}: the pool's registry is gone ({exc})") from None
