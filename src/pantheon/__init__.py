"""Pantheon: large-scale knowledge distillation with teachers and students in separate processes.

The public API is flat::

    from pantheon import Teacher, Student

Extending Pantheon: a codec (how a knowledge field is stored and sent) implements
:class:`Codec` and is made known to readers and peers with :func:`register_codec`.
"""

from __future__ import annotations

from ._codecs import (
    Codec,
    IntCast,
    Packed,
    Quant8,
    Sampled,
    SparseSamples,
    SparseTopK,
    TopK,
    register_codec,
    registered_codecs,
)
from ._errors import (
    AlignmentError,
    AuthenticationError,
    ClosedError,
    ConfigError,
    ConnectionLostError,
    FileFormatError,
    KnowledgeError,
    MergeError,
    MissingDependencyError,
    PantheonError,
    PantheonTimeoutError,
    ProtocolError,
    TeacherError,
    TruncatedFileError,
    WorkerError,
)
from ._files import KnowledgeFile, KnowledgeWriter
from ._knowledge import Chunk, Ragged
from ._logs import install_from_env
from ._student import Student
from ._teacher import Teacher
from ._version import __version__

__docformat__ = "google"

install_from_env()  # PANTHEON_LOG=json|text: a handler on the "pantheon" logger

__all__ = [
    "AlignmentError",
    "AuthenticationError",
    "Chunk",
    "ClosedError",
    "Codec",
    "ConfigError",
    "ConnectionLostError",
    "FileFormatError",
    "IntCast",
    "KnowledgeError",
    "KnowledgeFile",
    "KnowledgeWriter",
    "MergeError",
    "MissingDependencyError",
    "Packed",
    "PantheonError",
    "PantheonTimeoutError",
    "ProtocolError",
    "Quant8",
    "Ragged",
    "Sampled",
    "SparseSamples",
    "SparseTopK",
    "Student",
    "Teacher",
    "TeacherError",
    "TopK",
    "TruncatedFileError",
    "WorkerError",
    "__version__",
    "register_codec",
    "registered_codecs",
]
