"""A TCP proxy that adds latency, to put a real client in a far region from its server.

Clients connect to 127.0.0.1:<port>; the proxy forwards to the real server (TCP or Unix
socket), delivering every chunk `one_way_delay` (plus up to `jitter`) seconds after reading
it, in each direction, so that a round trip costs twice the delay, as it does across
regions. The delay is a pipeline, not a queue: a burst of chunks arrives as a burst, one
delay later, because each direction has its own sender that waits only for the next chunk's
due time.

It also counts round trips: each time the server answers after the client spoke, on any
connection. That is how tests count the database and broker round trips a heartbeat costs,
which is what decides whether it fits in a lease from a far region.

It is a `FaultProxy`, so `cut()`, `restore()` and `close()` behave the same way.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from tests.support.proxy import FaultProxy

COUNTERS = (
    "connections",
    "round_trips",
    "client_chunks",
    "server_chunks",
    "bytes_up",
    "bytes_down",
)


class _Link:
    """One direction of one connection: chunks waiting for their due times, and their sender.

    Chunks are sent in the order they were queued; due times never decrease, so jitter can
    stretch the gap between two chunks but never reorder them, as on one TCP stream.
    An empty chunk stands for the end of the stream: sending it closes the connection.
    """

    def __init__(self, destination: socket.socket, on_end: Callable[[], None]) -> None:
        self._destination = destination
        self._on_end = on_end
        self._queue: deque[tuple[float, bytes]] = deque()
        self._last_due = 0.0
        self._ready = threading.Condition()
        self._stopped = False
        threading.Thread(target=self._send_loop, daemon=True).start()

    def put(self, data: bytes, delay: float) -> None:
        with self._ready:
            self._last_due = max(self._last_due, time.monotonic() + delay)
            self._queue.append((self._last_due, data))
            self._ready.notify()

    def stop(self) -> None:
        """Drop whatever is still in flight and end the sender."""
        with self._ready:
            self._stopped = True
            self._queue.clear()
            self._ready.notify()

    def _next_due(self) -> bytes | None:
        with self._ready:
            while not self._stopped:
                if not self._queue:
                    self._ready.wait()
                    continue
                wait = self._queue[0][0] - time.monotonic()
                if wait <= 0:
                    return self._queue.popleft()[1]
                self._ready.wait(wait)
            return None

    def _send_loop(self) -> None:
        while data := self._next_due():
            try:
                self._destination.sendall(data)
            except OSError:
                break
        self._on_end()


class _Connection:
    """One proxied connection: a link each way, closed once by whichever end comes first."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        on_closed: Callable[[_Connection], None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.client_spoke_last = False
        self.closed = threading.Event()
        self._close_lock = threading.Lock()
        self._on_closed = on_closed
        self.up = _Link(upstream, self.close)
        self.down = _Link(client, self.close)

    def close(self) -> None:
        with self._close_lock:
            if self.closed.is_set():
                return
            self.closed.set()
        self.up.stop()
        self.down.stop()
        for sock in (self.client, self.upstream):
            # Wakes a sender blocked on a peer that stopped reading; close() alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._on_closed(self)


def _not_negative(name: str, seconds: float) -> float:
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, not {seconds}")
    return seconds


class DelayProxy(FaultProxy):
    """A `FaultProxy` that delays every chunk each way, and counts round trips.

    `one_way_delay` and `jitter` may be changed at any time; a change applies to the chunks
    read from then on. The counters are totals over every connection since the proxy started
    or `reset_counts()` was last called.
    """

    def __init__(
        self, target: tuple[str, int] | str, one_way_delay: float = 0.0, jitter: float = 0.0
    ) -> None:
        self.one_way_delay = one_way_delay
        self.jitter = jitter
        self._random = random.Random()
        self._counts_lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._connections: list[_Connection] = []
        super().__init__(target)

    @property
    def one_way_delay(self) -> float:
        return self._one_way_delay

    @one_way_delay.setter
    def one_way_delay(self, seconds: float) -> None:
        self._one_way_delay = _not_negative("one_way_delay", seconds)

    @property
    def jitter(self) -> float:
        return self._jitter

    @jitter.setter
    def jitter(self, seconds: float) -> None:
        self._jitter = _not_negative("jitter", seconds)

    def counts(self) -> dict[str, int]:
        """A snapshot of every counter, taken at one instant."""
        with self._counts_lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._counts_lock:
            self._counts = dict.fromkeys(COUNTERS, 0)

    @property
    def round_trips(self) -> int:
        """Times the server sent data after the client had spoken since the server last did."""
        return self.counts()["round_trips"]

    def cut(self) -> None:
        """Reset every connection at once, dropping what is in flight, and refuse new ones."""
        super().cut()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        connection = _Connection(client, upstream, self._forget)
        with self._lock:
            self._connections.append(connection)
        with self._counts_lock:
            self._counts["connections"] += 1
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, connection.up)
        selector.register(upstream, selectors.EVENT_READ, connection.down)
        try:
            while not connection.closed.is_set() and selector.get_map():
                for key, _ in selector.select(timeout=0.2):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if data:
                        self._count(connection, data, from_client=key.fileobj is client)
                    else:
                        # The end of the stream travels with the same delay as the data.
                        selector.unregister(key.fileobj)
                    key.data.put(data, self._delay())
        except (OSError, ValueError):
            connection.close()
        finally:
            selector.close()

    def _delay(self) -> float:
        return self.one_way_delay + self._random.uniform(0.0, self.jitter)

    def _count(self, connection: _Connection, data: bytes, from_client: bool) -> None:
        with self._counts_lock:
            if from_client:
                self._counts["client_chunks"] += 1
                self._counts["bytes_up"] += len(data)
                connection.client_spoke_last = True
                return
            self._counts["server_chunks"] += 1
            self._counts["bytes_down"] += len(data)
            if connection.client_spoke_last:
                self._counts["round_trips"] += 1
                connection.client_spoke_last = False

    def _forget(self, connection: _Connection) -> None:
        self._close_pair(connection.client, connection.upstream)
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
