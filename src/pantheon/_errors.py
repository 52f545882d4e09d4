"""The exception tree of Pantheon.

Every error the package raises on purpose derives from :class:`PantheonError`, so
``except pantheon.PantheonError`` catches them all. Errors about bad input also derive
from the built-in class a Python user would expect (``ValueError``, ``TimeoutError``,
``ConnectionError``, ``ImportError``), so the seed's ``except ValueError`` keeps working::

    PantheonError
    ├── ConfigError (ValueError)            bad arguments: both out_path and out_port, batch_size <= 0
    ├── KnowledgeError (ValueError)         a knowledge batch that is not what the description says
    ├── MergeError (ValueError)             keys shared without a strategy, unknown strategies
    │   └── AlignmentError                  teachers whose sample ids disagree
    ├── FileFormatError (ValueError)        missing, empty, corrupt or non-Pantheon knowledge file
    │   └── TruncatedFileError              a file cut short (complete batches can still be read)
    ├── ProtocolError (ConnectionError)     a malformed or hostile message on the wire
    ├── AuthenticationError (ConnectionError)  a peer without the right token
    ├── ConnectionLostError (ConnectionError)  a peer that went away
    ├── PantheonTimeoutError (TimeoutError) a wait that ran past its timeout
    ├── TeacherError (RuntimeError)         a teacher that failed or is gone for good
    ├── WorkerError (RuntimeError)          a prediction worker that raised (names device and batch)
    ├── ClosedError (RuntimeError)          use of a Teacher or Student after close()
    └── MissingDependencyError (ImportError)  an optional extra that is not installed

Messages say what was expected, what came, where, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AlignmentError",
    "AuthenticationError",
    "ClosedError",
    "ConfigError",
    "ConnectionLostError",
    "FileFormatError",
    "KnowledgeError",
    "MergeError",
    "MissingDependencyError",
    "PantheonError",
    "PantheonTimeoutError",
    "ProtocolError",
    "TeacherError",
    "TruncatedFileError",
    "WorkerError",
]


class PantheonError(Exception):
    """Base class of every error Pantheon raises on purpose."""


class ConfigError(PantheonError, ValueError):
    """Invalid arguments to a Pantheon object or function."""


class KnowledgeError(PantheonError, ValueError):
    """A knowledge batch that is malformed or does not match its description."""


class MergeError(PantheonError, ValueError):
    """Knowledge of several teachers that cannot be merged as asked."""


class AlignmentError(MergeError):
    """Teachers whose sample ids disagree: they did not read the same samples in the same order."""


class FileFormatError(PantheonError, ValueError):
    """A knowledge file that is missing, empty, corrupt or not written by Pantheon."""


class TruncatedFileError(FileFormatError):
    """A knowledge file cut short, e.g. by a teacher killed while dumping.

    Attributes:
        path: the file.
        complete_batches: how many complete batches can still be read.
        complete_samples: how many samples those batches hold.
        offset: the byte offset at which the file stops making sense.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        complete_batches: int = 0,
        complete_samples: int = 0,
        offset: int = 0,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.complete_batches = complete_batches
        self.complete_samples = complete_samples
        self.offset = offset


class ProtocolError(PantheonError, ConnectionError):
    """A message on the wire that breaks the protocol (bad magic, oversized, malformed)."""


class AuthenticationError(PantheonError, ConnectionError):
    """A peer that failed the token challenge (wrong or missing token)."""


class ConnectionLostError(PantheonError, ConnectionError):
    """A peer that closed the connection or stopped answering heartbeats."""


class PantheonTimeoutError(PantheonError, TimeoutError):
    """A wait that ran past its timeout."""


class TeacherError(PantheonError, RuntimeError):
    """A teacher that failed, refused a request, or is gone for good."""


class WorkerError(PantheonError, RuntimeError):
    """A prediction worker of the knowledge service that raised an exception."""


class ClosedError(PantheonError, RuntimeError):
    """Use of a Teacher or Student after ``close()``."""


class MissingDependencyError(PantheonError, ImportError):
    """An optional dependency (an *extra*) that is not installed."""


def missing_extra(package: str, extra: str, *, feature: str) -> MissingDependencyError:
    """Build the error for a missing optional dependency, naming the extra to install."""
    return MissingDependencyError(
        f"{feature} needs the package {package!r}, which is not installed. "
        f"Install it with: pip install 'pantheon-kd[{extra}]'"
    )


def error_text(exc: BaseException) -> str:
    """How an error reads inside another message: a Pantheon error in its own words (they
    name what failed), anything else with its type (``KeyError: 'x'``)."""
    return str(exc) if isinstance(exc, PantheonError) else f"{type(exc).__name__}: {exc}"
