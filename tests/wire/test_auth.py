"""Token authentication: the handshake over real TCP, what crosses the wire, replays, binding."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pantheon import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    PantheonTimeoutError,
    ProtocolError,
)
from pantheon._wire import (
    PROTOCOL_VERSION,
    TOKEN_ENV,
    Connection,
    Listener,
    MsgType,
    check_bind,
    client_handshake,
    connect,
    listen,
    mac_input,
    parse_address,
    resolve_token,
    server_handshake,
)
from tests.helpers import Runner


class Tap:
    """A TCP relay in front of ``target`` that records the bytes going each way."""

    def __init__(self, target: str) -> None:
        self._target = parse_address(target)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self.up = bytearray()  # client -> server
        self.down = bytearray()  # server -> client
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        client, _ = self._server.accept()
        server = socket.create_connection(self._target, timeout=10)
        client.settimeout(None)
        server.settimeout(None)
        self._socks += [client, server]
        for src, dst, log in ((client, server, self.up), (server, client, self.down)):
            t = threading.Thread(target=self._pump, args=(src, dst, log), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        try:
            while data := src.recv(65536):
                log += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._accepter.join(10)
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(10)
        for s in self._socks:
            s.close()
        self._server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    with listen() as lst:
        yield lst


def handshake(
    listener: Listener,
    server_token: bytes | None,
    client_token: bytes | None,
    *,
    address: str | None = None,
) -> tuple[Runner, Runner, list[Connection]]:
    """Run both handshakes (server in a thread); return the runners and connections to close."""
    conns: list[Connection] = []

    def server() -> dict[str, Any]:
        conn = listener.accept(timeout=10)
        conns.append(conn)
        return server_handshake(conn, server_token, timeout=10, hello={"role": "teacher", "n": 1})

    def client() -> dict[str, Any]:
        conn = connect(address or listener.address, timeout=10)
        conns.append(conn)
        return client_handshake(
            conn, client_token, timeout=10, hello={"role": "student", "id": "s0"}
        )

    srv = Runner(server)
    cli = Runner(client)
    srv.thread.join(30)
    cli.thread.join(30)
    return srv, cli, conns


def close_all(conns: list[Connection]) -> None:
    for c in conns:
        c.close()


def test_right_token(listener: Listener) -> None:
    srv, cli, conns = handshake(listener, b"s3cret", b"s3cret")
    assert srv.join() == {"role": "student", "id": "s0", "version": PROTOCOL_VERSION}
    assert cli.join() == {"role": "teacher", "n": 1, "version": PROTOCOL_VERSION}
    server_conn = next(c for c in conns if c.peer != listener.address)
    client_conn = next(c for c in conns if c.peer == listener.address)
    # the connection is usable afterwards, with its normal caps back
    assert server_conn.max_frames == 4096
    client_conn.send(MsgType.DATA, {"x": 1}, [b"payload"])
    assert bytes(server_conn.recv(timeout=10).frames[0]) == b"payload"
    close_all(conns)


def test_no_token_on_both_sides(listener: Listener) -> None:
    srv, cli, conns = handshake(listener, None, None)
    assert srv.join()["role"] == "student"
    assert cli.join()["role"] == "teacher"
    close_all(conns)


def test_wrong_token_both_sides_raise_naming_the_client(listener: Listener) -> None:
    srv, cli, conns = handshake(listener, b"right", b"wrong")
    client_addr = next(c.local for c in conns if c.peer == listener.address)
    with pytest.raises(
        AuthenticationError, match=f"did not prove.*{client_addr}|{client_addr}.*did not prove"
    ):
        srv.join()
    with pytest.raises(AuthenticationError, match=f"same token=.*{TOKEN_ENV}"):
        cli.join()
    assert all(c.closed for c in conns)
    close_all(conns)


@pytest.mark.parametrize(("server_token", "client_token"), [(b"tok", None), (None, b"tok")])
def test_token_on_one_side_only(
    listener: Listener, server_token: bytes | None, client_token: bytes | None
) -> None:
    srv, cli, conns = handshake(listener, server_token, client_token)
    with pytest.raises(AuthenticationError):
        srv.join()
    with pytest.raises(AuthenticationError, match=TOKEN_ENV):
        cli.join()
    close_all(conns)


def test_token_never_crosses_the_wire_and_replays_fail(listener: Listener) -> None:
    token = secrets.token_hex(16).encode()
    tap = Tap(listener.address)
    try:
        srv, cli, conns = handshake(listener, token, token, address=tap.address)
        srv.join()
        cli.join()
        close_all(conns)
    finally:
        tap.close()
    wire = bytes(tap.up) + bytes(tap.down)
    assert len(tap.up) > 64
    assert len(tap.down) > 64
    assert token not in wire
    assert token.hex().encode() not in wire
    # replaying the client's recorded bytes (HELLO + AUTH) to the server fails
    host, port = parse_address(listener.address)
    with socket.create_connection((host, port), timeout=10) as attacker:
        attacker.sendall(bytes(tap.up))
        conn = listener.accept(timeout=10)
        with pytest.raises(AuthenticationError):
            server_handshake(conn, token, timeout=10)
        assert conn.closed


def test_server_proof_is_checked(listener: Listener) -> None:
    """A server that does not hold the token cannot pass itself off as the teacher."""

    def impostor() -> None:
        conn = listener.accept(timeout=10)
        with conn:
            hello = conn.recv(timeout=10)
            assert hello.type == MsgType.HELLO
            conn.send(MsgType.CHALLENGE, {"version": PROTOCOL_VERSION, "nonce": bytes(32)})
            assert conn.recv(timeout=10).type == MsgType.AUTH
            conn.send(MsgType.AUTH_OK, {"proof": bytes(32), "hello": {}})
            with pytest.raises(ConnectionLostError):  # the client hangs up
                conn.recv(timeout=10)

    runner = Runner(impostor)
    conn = connect(listener.address, timeout=10)
    with pytest.raises(AuthenticationError, match="could not prove"):
        client_handshake(conn, b"token", timeout=10)
    assert conn.closed
    runner.join()


def test_version_mismatch_names_both_versions(listener: Listener) -> None:
    conn = connect(listener.address, timeout=10)
    server_conn = listener.accept(timeout=10)
    srv = Runner(lambda: server_handshake(server_conn, None, timeout=10))
    conn.send(MsgType.HELLO, {"version": 99, "nonce": bytes(32)})
    reply = conn.recv(timeout=10)
    assert reply.type == MsgType.AUTH_FAIL
    assert reply.header == {"reason": "version", "version": PROTOCOL_VERSION}
    with pytest.raises(
        ProtocolError, match=f"version 99, this side speaks version {PROTOCOL_VERSION}"
    ):
        srv.join()
    conn.close()


def test_client_sees_version_mismatch(listener: Listener) -> None:
    def old_server() -> None:
        conn = listener.accept(timeout=10)
        with conn:
            conn.recv(timeout=10)
            conn.send(MsgType.AUTH_FAIL, {"reason": "version", "version": 7})

    runner = Runner(old_server)
    conn = connect(listener.address, timeout=10)
    with pytest.raises(
        ProtocolError, match=f"version 7, this side speaks version {PROTOCOL_VERSION}"
    ):
        client_handshake(conn, None, timeout=10)
    runner.join()


def test_handshake_timeout_and_wrong_messages(listener: Listener) -> None:
    conn = connect(listener.address, timeout=10)
    server_conn = listener.accept(timeout=10)
    with pytest.raises(PantheonTimeoutError, match="waiting for HELLO"):
        server_handshake(server_conn, None, timeout=0.1)
    assert server_conn.closed
    conn.close()

    conn = connect(listener.address, timeout=10)
    server_conn = listener.accept(timeout=10)
    conn.send(MsgType.DATA, {"x": 1})
    with pytest.raises(ProtocolError, match="expected HELLO, got"):
        server_handshake(server_conn, None, timeout=10)
    conn.close()

    conn = connect(listener.address, timeout=10)
    server_conn = listener.accept(timeout=10)
    conn.send(MsgType.HELLO, {"version": PROTOCOL_VERSION, "nonce": b"short"})
    with pytest.raises(ProtocolError, match="'nonce' should be bytes of 32 bytes"):
        server_handshake(server_conn, None, timeout=10)
    conn.close()


def test_unauthenticated_peers_get_small_caps(listener: Listener) -> None:
    conn = connect(listener.address, timeout=10)
    server_conn = listener.accept(timeout=10)
    conn.send(MsgType.HELLO, {"version": PROTOCOL_VERSION, "nonce": bytes(32)}, [b"x" * 100])
    with pytest.raises(ProtocolError, match="max_frames"):
        server_handshake(server_conn, None, timeout=10)
    conn.close()


def test_mac_input_layout() -> None:
    nc, ns = bytes(range(32)), bytes(range(32, 64))
    data = mac_input("client", nc, ns)
    assert data == b"pantheon-auth\x00client\x00" + PROTOCOL_VERSION.to_bytes(2, "little") + nc + ns
    assert mac_input("server", nc, ns) != data


def test_resolve_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token(None) is None
    assert resolve_token("abc") == b"abc"
    assert resolve_token("é") == "é".encode()
    assert resolve_token(b"\x00\x01") == b"\x00\x01"
    assert resolve_token("") is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None) == b"from-env"
    assert resolve_token("explicit") == b"explicit"
    monkeypatch.setenv(TOKEN_ENV, "")
    assert resolve_token(None) is None
    with pytest.raises(ConfigError, match="str, bytes or None"):
        resolve_token(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.3.4.5", "localhost", "::1", "[::1]", "LOCALHOST"]
)
def test_check_bind_allows_loopback_without_token(host: str) -> None:
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.168.1.10", "::", "teacher-0.example.com"])
def test_check_bind_needs_a_token_elsewhere(host: str) -> None:
    with pytest.raises(ConfigError, match=f"token=.*{TOKEN_ENV}"):
        check_bind(host, None)
    with pytest.raises(ConfigError):
        check_bind(host, b"")
    check_bind(host, b"tok")
