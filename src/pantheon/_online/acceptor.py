"""Accepting clients: a bounded number of handshakes at once, back-off on accept errors,
and refusals logged at most once every few seconds per kind."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .._errors import PantheonError, PantheonTimeoutError
from .._util import Backoff, Deadline
from .._wire import Connection, Heartbeat, Listener, accept_offer, server_handshake
from .messages import Hello, parse_hello

__all__ = ["Acceptor", "RateLimitedLog"]

log = logging.getLogger("pantheon")


class RateLimitedLog:
    """At most one log line per ``every`` seconds for a kind of event; counts the rest."""

    def __init__(self, every: float = 5.0) -> None:
        self._every = every
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self._every:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        self._last[kind] = now
        suffix = f" ({skipped} more like it in the last {self._every:g} s)" if skipped else ""
        log.warning(message + suffix, *args)


class Acceptor:
    """Accept connections on ``listener`` and authenticate them, each in a thread of its own.

    Args:
        listener: where clients connect.
        token: the shared secret (None: none).
        heartbeat: its timeout bounds each handshake.
        on_client: called (in the handshake's thread) with each authenticated connection and
            the client's checked hello.
        max_handshakes: handshakes in progress at most; more connections are closed at once.
    """

    def __init__(
        self,
        listener: Listener,
        token: bytes | None,
        heartbeat: Heartbeat,
        on_client: Callable[[Connection, Hello], None],
        *,
        max_handshakes: int = 32,
    ) -> None:
        self._listener = listener
        self._token = token
        self._heartbeat = heartbeat
        self._on_client = on_client
        self._max = max_handshakes
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self.warn = RateLimitedLog()
        self._thread = threading.Thread(
            target=self._accept_loop, name="pantheon-accept", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting (the listener is closed by its owner)."""
        self._closed = True

    def _accept_loop(self) -> None:
        backoff = Backoff(0.05, 1.0)
        while not self._closed:
            try:
                conn = self._listener.accept(timeout=0.5)
            except PantheonTimeoutError:
                continue
            except (OSError, PantheonError) as exc:
                if self._closed:
                    return
                self.warn.warning("accept", "accepting connections failed: %s", exc)
                backoff.sleep(Deadline(1.0))  # e.g. out of file descriptors: do not spin
                continue
            backoff = Backoff(0.05, 1.0)
            with self._lock:
                busy = self._pending >= self._max
                if not busy:
                    self._pending += 1
            if busy:
                self.warn.warning(
                    "busy",
                    "refused a connection from %s: %d connections are already authenticating",
                    conn.peer,
                    self._max,
                )
                conn.close()
                continue
            try:
                threading.Thread(
                    target=self._handshake, args=(conn,), name="pantheon-handshake", daemon=True
                ).start()
            except RuntimeError as exc:  # no thread to be had (a process at its limit)
                with self._lock:
                    self._pending -= 1
                self.warn.warning("thread", "refused a connection from %s: %s", conn.peer, exc)
                conn.close()
                backoff.sleep(Deadline(1.0))

    def _handshake(self, conn: Connection) -> None:
        try:
            raw = server_handshake(conn, self._token, timeout=self._heartbeat.timeout)
            hello = parse_hello(raw)
            if "shm" in raw:  # only now, the client authenticated: map its ring or say why not
                conn = accept_offer(conn, raw["shm"], self._heartbeat.timeout)
        except (OSError, PantheonError) as exc:
            self.warn.warning("refused", "refused a connection from %s: %s", conn.peer, exc)
            conn.close()
            return
        finally:
            with self._lock:
                self._pending -= 1
        if self._closed:
            conn.close()
            return
        self._on_client(conn, hello)
