"""Online knowledge: the teacher's server and the student's source for one online teacher.

The seam of the online layer, built on the wire (:mod:`pantheon._wire`) and the codecs:
:class:`TeacherServer` accepts and authenticates students and streams rounds with credits or
answers queries; :class:`OnlineSource` is one online teacher (one address or replicas) as the
student sees it, reconnecting and resuming from the first sample it does not hold;
:class:`PoolSource` is a named pool of replicas (``ray://NAME``, resolved through the scheme
registry of :mod:`.resolve`) whose members it follows as they change.
"""

from __future__ import annotations

from .link import TRANSPORTS, check_transport
from .members import Follow
from .messages import check_window
from .metrics import TeacherMeters, teacher_metrics
from .payload import decode_payload, decode_plain, encode_chunks
from .pool import PoolSource, SplitRound, open_source
from .resolve import MODES, Membership, Resolver, open_resolver, register_scheme, scheme_of
from .server import ServeOptions, TeacherServer
from .source import OnlineSource
from .status import fetch_status

__all__ = [
    "MODES",
    "TRANSPORTS",
    "Follow",
    "Membership",
    "OnlineSource",
    "PoolSource",
    "Resolver",
    "ServeOptions",
    "SplitRound",
    "TeacherMeters",
    "TeacherServer",
    "check_transport",
    "check_window",
    "decode_payload",
    "decode_plain",
    "encode_chunks",
    "fetch_status",
    "open_resolver",
    "open_source",
    "register_scheme",
    "scheme_of",
    "teacher_metrics",
]
