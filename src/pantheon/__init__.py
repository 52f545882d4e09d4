"""Pantheon: large-scale knowledge distillation with teachers and students in separate processes.

The public API is flat::

    from pantheon import Teacher, Student
"""

from __future__ import annotations

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
from ._knowledge import Ragged
from ._reader import KnowledgeFile
from ._store import KnowledgeWriter
from ._student import Student
from ._teacher import Teacher
from ._topk import SparseTopK, TopK

__version__ = "0.1.0"
__docformat__ = "google"

__all__ = [
    "AlignmentError",
    "AuthenticationError",
    "ClosedError",
    "ConfigError",
    "ConnectionLostError",
    "FileFormatError",
    "KnowledgeError",
    "KnowledgeFile",
    "KnowledgeWriter",
    "MergeError",
    "MissingDependencyError",
    "PantheonError",
    "PantheonTimeoutError",
    "ProtocolError",
    "Ragged",
    "SparseTopK",
    "Student",
    "Teacher",
    "TeacherError",
    "TopK",
    "TruncatedFileError",
    "WorkerError",
    "__version__",
]
