"""DelayProxy: latency each way, in a pipeline, order kept, and one round trip per exchange.

The far server is an echo server on a loopback socket, so nothing but the proxy adds time.
Only lower bounds on time are asserted: a slow machine may make any exchange slower.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.delay_proxy import DelayProxy

DELAY = 0.05


def echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        while data := conn.recv(65536):
            conn.sendall(data)


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


@contextlib.contextmanager
def echo_server(listener: socket.socket) -> Iterator[tuple[str, int] | str]:
    """Echo on a bound `listener` until the block ends; yields its address."""
    listener.listen(16)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    try:
        yield listener.getsockname()
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() alone does not
        listener.close()


def tcp_listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    return listener


@pytest.fixture(params=["tcp", "unix"])
def echo_target(request, tmp_path) -> Iterator[tuple[str, int] | str]:
    """An echo server on TCP loopback or on a Unix socket, as the proxy's target."""
    if request.param == "tcp":
        listener = tcp_listener()
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "echo.sock"))
    with echo_server(listener) as address:
        yield address


@pytest.fixture
def tcp_echo_target() -> Iterator[tuple[str, int] | str]:
    with echo_server(tcp_listener()) as address:
        yield address


def connect(proxy: DelayProxy) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def receive(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def exchange(client: socket.socket, message: bytes) -> float:
    """Send `message`, read its echo back, and return how long that took."""
    started = time.monotonic()
    client.sendall(message)
    assert receive(client, len(message)) == message
    return time.monotonic() - started


def test_each_exchange_counts_one_round_trip_and_costs_two_delays(echo_target):
    proxy = DelayProxy(echo_target, one_way_delay=DELAY)
    try:
        with connect(proxy) as client:
            messages = [b"ping %d\n" % n for n in range(1, 5)]
            for n, message in enumerate(messages, start=1):
                assert exchange(client, message) >= 2 * DELAY
                assert proxy.round_trips == n
        total = sum(map(len, messages))
        counts = proxy.counts()
        assert counts["connections"] == 1
        assert counts["round_trips"] == len(messages)
        assert counts["bytes_up"] == counts["bytes_down"] == total
        proxy.reset_counts()
        assert set(proxy.counts().values()) == {0}
    finally:
        proxy.close()


def test_a_pipeline_of_chunks_arrives_intact_and_in_order(tcp_echo_target):
    proxy = DelayProxy(tcp_echo_target, one_way_delay=0.02, jitter=0.02)
    chunks = [b"%04d;" % n for n in range(200)]
    expected = b"".join(chunks)
    try:
        with connect(proxy) as client:
            for chunk in chunks:
                client.sendall(chunk)
                time.sleep(0.001)  # separate chunks, many of them in flight at once
            assert receive(client, len(expected)) == expected
        counts = proxy.counts()
        assert counts["client_chunks"] > 1
        assert counts["bytes_up"] == counts["bytes_down"] == len(expected)
    finally:
        proxy.close()


def test_the_delay_can_change_while_connected(tcp_echo_target):
    proxy = DelayProxy(tcp_echo_target)
    try:
        with connect(proxy) as client:
            exchange(client, b"near\n")
            proxy.one_way_delay = 2 * DELAY
            assert exchange(client, b"far\n") >= 4 * DELAY
        with pytest.raises(ValueError):
            proxy.one_way_delay = -1.0
    finally:
        proxy.close()


def test_cut_resets_connections_and_refuses_new_ones_until_restored(tcp_echo_target):
    proxy = DelayProxy(tcp_echo_target, one_way_delay=0.01)
    try:
        with connect(proxy) as client:
            exchange(client, b"before\n")
            proxy.cut()
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(1) == b""
        with pytest.raises(ConnectionRefusedError):
            connect(proxy)
        proxy.restore()
        with connect(proxy) as client:
            assert exchange(client, b"after\n") >= 2 * 0.01
    finally:
        proxy.close()
