"""Online knowledge: the teacher's server and the student's source for one online teacher.

The seam of the online layer, built on the wire (:mod:`pantheon._wire`) and the codecs:
:class:`TeacherServer` accepts and authenticates students and streams rounds with credits or
answers queries; :class:`OnlineSource` is one online teacher (one address or replicas) as the
student sees it, reconnecting and resuming from the first sample it does not hold.
"""

from __future__ import annotations

from .link import TRANSPORTS
from .metrics import TeacherMeters, teacher_metrics
from .payload import decode_payload, decode_plain, encode_chunks
from .server import ServeOptions, TeacherServer
from .source import OnlineSource
from .status import fetch_status

__all__ = [
    "TRANSPORTS",
    "OnlineSource",
    "ServeOptions",
    "TeacherMeters",
    "TeacherServer",
    "decode_payload",
    "decode_plain",
    "encode_chunks",
    "fetch_status",
    "teacher_metrics",
]
