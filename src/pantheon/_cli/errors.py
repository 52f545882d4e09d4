"""Errors of the command line: library messages said in the words of the CLI's options.

The library's messages name Python arguments (``token=...``, ``feed_list``, ``out_port``); a
user of ``pantheon serve`` typed ``--token``, ``--feed``, ``--port``. :func:`cli_words` rewrites
those names, and two helpers turn a :class:`~pantheon.PantheonError` into the click exception
that gives the right exit status:

* :func:`usage_error` - the cause is the command line (a bad option value or combination):
  click prints the usage line and ``Error: ...`` and exits with status 2;
* :func:`run_error` - the command failed while running: ``Error: ...`` and status 1, no usage.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import click

from .._errors import PantheonError

__all__ = ["cli_words", "run_error", "usage_error"]


def _schema(match: re.Match[str]) -> str:
    name, source = match.group(1), match.group(2)
    return f"--schema {name}" if source in (None, name) else f"--schema {name}={source}"


_Rewrite = str | Callable[[re.Match[str]], str]

# (pattern, replacement), applied in order: the longer forms first.
_WORDS: list[tuple[re.Pattern[str], _Rewrite]] = [
    (re.compile(r"\b(?:Teacher|Student)\(timeout=\.\.\.\)"), "--timeout"),
    (re.compile(r"\btoken=\.\.\."), "--token"),
    (re.compile(r"\bTeacher\(token=[^)]*\)"), "--token"),
    (re.compile(r"\bschema\['([^']*)'\](?: = '([^']*)')?"), _schema),
    (re.compile(r"\breader_config\['\w+'\]"), "--reader"),
    (re.compile(r"\breader_config=None \(query mode\)"), "no --reader (query mode)"),
    (re.compile(r"\breader_config\b"), "--reader"),
    (re.compile(r"\bfeed_list\b"), "--feed"),
    (re.compile(r"\btimes=(\d+)"), r"--times \1"),
    (re.compile(r"\bout_port\b"), "--port"),
    (re.compile(r"\bout_path\b"), "--out"),
    (re.compile(r"\buse_fp16\b"), "--fp16"),
    (re.compile(r"\bbatch_size\b"), "--batch-size"),
    (re.compile(r"(?<![\w.-])exe\b(?![.(=])"), "--exe"),
]


def cli_words(message: str) -> str:
    """``message`` with the library's Python argument names replaced by the CLI's options.

    Whitespace runs (the library wraps some messages over lines) become single spaces.
    """
    text = " ".join(message.split())
    for pattern, replacement in _WORDS:
        text = pattern.sub(replacement, text)
    return text


def usage_error(exc: BaseException, param_hint: str | None = None) -> click.UsageError:
    """A usage error (exit status 2) for ``exc``, caused by the command line.

    Args:
        exc: the library's error.
        param_hint: the option to name (e.g. ``"'--weights'"``); click then says
            ``Invalid value for '--weights': ...``. Default: the message alone.
    """
    message = cli_words(str(exc))
    if param_hint is not None:
        return click.BadParameter(message, param_hint=param_hint)
    return click.UsageError(message)


def run_error(exc: PantheonError | OSError) -> click.ClickException:
    """The error (exit status 1, no usage text) of a command that failed while running."""
    if isinstance(exc, OSError) and not isinstance(exc, PantheonError):
        where = f" ({exc.filename})" if exc.filename else ""
        return click.ClickException(f"{exc.strerror or exc}{where}")
    return click.ClickException(cli_words(str(exc)))
