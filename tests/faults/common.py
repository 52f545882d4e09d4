"""Hostile peers for the fault suite: a raw authenticated student that sends whatever a test
crafts, and a fake teacher that answers a real student with crafted messages, both built from
the project's own framing and handshake over real sockets on 127.0.0.1."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from pantheon import Teacher
from pantheon._errors import PantheonError, PantheonTimeoutError
from pantheon._online.messages import Desc, EndRound, Subscribe, header, parse
from pantheon._wire import (
    Connection,
    Message,
    MsgType,
    client_handshake,
    connect,
    encode_parts,
    listen,
    server_handshake,
)
from tests.helpers import Runner

_CLIENTS = itertools.count()

X_DESC = {"x": {"shape": [-1, 1], "dtype": "int64", "lod_level": 0}}


def reader(samples: int = 100, batch: int = 10) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """A reader of ``samples`` int64 ids ``x`` in batches of ``batch``."""

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, samples, batch):
            stop = min(start + batch, samples)
            yield {"x": np.arange(start, stop, dtype=np.int64).reshape(-1, 1)}

    return gen


def hostile_student(
    address: str, *, group: str = "hostile", rank: int = 0, world_size: int = 1, **hello: Any
) -> Connection:
    """An authenticated connection to a teacher that speaks as a student of ``group``."""
    conn = connect(address, timeout=10)
    me = {
        "role": "student",
        "client": f"hostile-{next(_CLIENTS)}",
        "group": group,
        "rank": rank,
        "world_size": world_size,
        **hello,
    }
    client_handshake(conn, None, timeout=10, hello=me)
    return conn


def closed_by_peer(conn: Connection, timeout: float = 5.0) -> list[Message]:
    """Read until the peer closes ``conn``; fails if it does not within ``timeout`` s (below
    the default heartbeat timeout of 10 s, so a close for silence does not count). Returns
    what came before (PINGs left out)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the peer did not close the connection within {timeout} s"
        try:
            msg = conn.recv(timeout=left)
        except PantheonTimeoutError:
            raise AssertionError(
                f"the peer did not close the connection within {timeout} s"
            ) from None
        except PantheonError:
            conn.close()
            return got
        if msg.type != MsgType.PING:
            got.append(msg)


class LiveTeacher:
    """A real online Teacher on port 0 serving ``reader`` in a thread; ``close()`` joins it."""

    def __init__(self, read: Any = None, *, times: int = 1, timeout: float = 30, **kw: Any):
        self.teacher = Teacher(out_port=0, timeout=timeout, **kw)
        self.address = self.teacher.address
        self.runner = Runner(lambda: self.teacher.serve(read or reader(), times=times))

    def join(self, timeout: float = 30) -> Any:
        return self.runner.join(timeout)

    def close(self) -> None:
        self.teacher.close()
        self.runner.thread.join(30)


class FakeTeacher:
    """A listener that authenticates one student at a time and lets ``script(conn)`` answer
    it (in a thread); the script's exception, if any, is kept in ``error``."""

    def __init__(self, script: Callable[[Connection], None]) -> None:
        self._listener = listen("127.0.0.1", 0)
        self.address = self._listener.address
        self._script = script
        self._stop = threading.Event()
        self.connections = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._listener.accept(timeout=0.2)
            except PantheonError:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                server_handshake(conn, None, timeout=10)
                self._script(conn)
            except PantheonError:
                pass  # the student closed the connection: what a test expects
            except BaseException as exc:  # a bug in the script: the test reports it
                self.error = exc
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


def send_desc(conn: Connection, desc: Mapping[str, Any] = X_DESC, times: int = 1) -> None:
    """Send DESC of ``desc`` without codecs."""
    conn.send(*header(Desc(dict(desc), {}, times)))


def wait_subscribe(conn: Connection, timeout: float = 10) -> Subscribe:
    """The next SUBSCRIBE the student sends (other messages skipped)."""
    while True:
        msg = conn.recv(timeout=timeout)
        if msg.type == MsgType.SUBSCRIBE:
            event = parse(msg.type, msg.header)
            assert isinstance(event, Subscribe)
            return event


def send_data(
    conn: Connection,
    sub: Subscribe,
    ids: Any,
    parts: Mapping[tuple[str, str], Any],
    upto: int | None = None,
) -> None:
    """A DATA message of subscription ``sub`` holding ``ids`` and stored ``parts``."""
    ids = np.asarray(ids, dtype=np.int64)
    head, frames = encode_parts(ids, parts)
    extra = {"sub": sub.sub, "round": sub.round, "upto": int(ids[-1]) + 1 if upto is None else upto}
    conn.send(MsgType.DATA, {**head, **extra}, frames)


def send_end(conn: Connection, sub: Subscribe, samples: int) -> None:
    """END_ROUND of subscription ``sub`` with ``samples`` samples in all."""
    conn.send(*header(EndRound(sub.sub, sub.round, samples)))


def xs(start: int, stop: int) -> dict[tuple[str, str], np.ndarray]:
    """Stored parts of ``x`` = ids ``start..stop-1``."""
    return {("x", ""): np.arange(start, stop, dtype=np.int64).reshape(-1, 1)}
