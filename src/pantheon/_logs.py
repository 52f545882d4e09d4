"""``PANTHEON_LOG``: a handler for the ``pantheon`` logger chosen in the environment.

Pantheon logs through the standard ``logging`` module, to the logger ``"pantheon"``, and
installs no handler by default (the application configures logging). With the environment
variable ``PANTHEON_LOG`` set when ``pantheon`` is imported:

* ``json``: one JSON object per line on stderr, for log shippers: ``{"time": ISO 8601 UTC,
  "level", "logger", "message", "process", "thread"}`` plus ``"exception"`` (the formatted
  traceback) when there is one;
* ``text``: plain lines ``TIME LEVEL pantheon: message`` on stderr.

Either way the logger's level becomes INFO (unless set lower already) and it stops
propagating to the root logger, so that each record is written once.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

from ._errors import ConfigError

__all__ = ["LOG_ENV", "JsonFormatter", "install_from_env"]

LOG_ENV = "PANTHEON_LOG"
"""The environment variable that chooses a handler: ``json`` or ``text``."""

_MARK = "_pantheon_env_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (one line: newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        out = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def install_from_env(environ: dict[str, str] | None = None) -> logging.Handler | None:
    """Install the handler ``PANTHEON_LOG`` asks for on the ``pantheon`` logger (once); the
    handler, or None when the variable is unset or empty.

    Raises:
        ConfigError: a value other than ``json`` or ``text``.
    """
    value = (os.environ if environ is None else environ).get(LOG_ENV, "").strip().lower()
    if not value:
        return None
    if value not in ("json", "text"):
        raise ConfigError(
            f"{LOG_ENV}={value!r}: expected 'json' (one JSON object per line) or 'text' (plain "
            f"lines), on stderr; unset it to configure logging yourself"
        )
    logger = logging.getLogger("pantheon")
    for handler in logger.handlers:
        if getattr(handler, _MARK, None) == value:
            return handler
    for handler in [h for h in logger.handlers if getattr(h, _MARK, None)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if value == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _MARK, value)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler
