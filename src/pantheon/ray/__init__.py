"""Ray adapter: teacher pools as Ray actors, knowledge generation with Ray Data.

Importing this module imports ``ray`` (``pip install 'pantheon-kd[ray]'``); the rest of
Pantheon never does. A student that sees an ``in_address="ray://NAME"`` imports it by name.

* :class:`TeacherPool`: replicas of a teacher as Ray actors (placement, restarts by Ray),
  found by name from any process of the cluster; students register ``"ray://NAME"``.
* :func:`generate_knowledge`: a ``ray.data.Dataset`` through a teacher program on an actor
  pool, written as knowledge shards (resumable).

Ray schedules and restarts; the knowledge travels over Pantheon's own wire (never through
Ray's object store), and its sequence numbers keep every sample exactly once.
"""

from __future__ import annotations

from .._errors import missing_extra

try:
    import ray  # noqa: F401 - the extra's dependency, imported first for a clear error
except ImportError as _exc:  # pragma: no cover - exercised only without ray
    raise missing_extra("ray", "ray", feature="pantheon.ray") from _exc

from .._online import register_scheme
from ._generate import generate_knowledge
from ._pool import NAMESPACE, RayResolver, TeacherPool

register_scheme("ray", RayResolver)

__all__ = ["NAMESPACE", "RayResolver", "TeacherPool", "generate_knowledge"]
