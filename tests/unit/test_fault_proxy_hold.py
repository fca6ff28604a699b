"""FaultProxy.hold()/release(): a silent partition that heals delivers what it held, in order."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.proxy import FaultProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on a free port, for the proxy to forward to."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(connection: socket.socket) -> None:
        with connection, contextlib.suppress(ConnectionResetError):
            while data := connection.recv(65536):
                connection.sendall(data)

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def read_exactly(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_held_bytes_and_clients_get_through_in_order_after_release(echo_port: int) -> None:
    proxy = FaultProxy(("127.0.0.1", echo_port))
    try:
        old = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        old.sendall(b"before")
        assert read_exactly(old, 6) == b"before"
        # When the proxy holds, an open connection's words and a new client get no answer
        proxy.hold()
        for word in (b"one ", b"two ", b"three"):
            old.sendall(word)
        new = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        new.sendall(b"hello")
        old.settimeout(0.5)
        with pytest.raises(TimeoutError):
            old.recv(1)
        # Then, healed, both get every answer, in order
        proxy.release()
        old.settimeout(5)
        assert read_exactly(old, 13) == b"one two three"
        assert read_exactly(new, 5) == b"hello"
        old.close()
        new.close()
    finally:
        proxy.close()
