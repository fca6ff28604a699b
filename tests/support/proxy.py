"""A TCP proxy that the tests can cut, to play a broker or database outage for real clients.

Clients connect to 127.0.0.1:<port>; the proxy forwards to the real server (TCP or Unix
socket). `cut()` resets every open connection and refuses new ones, as a stopped server
does; `restore()` accepts again on the same port. `silence()` plays a server that vanished
without a word (powered off behind a load balancer): connections, open and new, are
accepted and acknowledged, and nothing ever comes back. `hold()` plays a silent partition
that heals: nothing is forwarded and new clients get no answer, but what is sent meanwhile is
kept; `release()` delivers it late, in order, and lets the waiting clients through.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._running = True
        self._silent = threading.Event()
        self._held: list[socket.socket] = []
        self._holding = threading.Event()
        self._waiting: list[socket.socket] = []
        self._backlog: dict[socket.socket, list[bytes]] = {}
        self._listen()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _connect_target(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.connect(self.target)
        return upstream

    def _accept_loop(self) -> None:
        while self._running:
            listener = self._listener
            if listener is None:
                threading.Event().wait(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._silent.is_set():
                self._held.append(client)
                continue
            with self._lock:
                if self._holding.is_set():
                    self._waiting.append(client)
                    continue
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        """Connect `client` to the server and pump between them (closed if it cannot)."""
        try:
            upstream = self._connect_target()
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                waiting = self._holding.is_set() or bool(self._backlog)
                for key, _ in selector.select(timeout=0.05 if waiting else 0.5):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        while self._holding.is_set():
                            time.sleep(0.05)
                        self._deliver_backlog((client, upstream), held=False)
                        return
                    if self._silent.is_set():
                        continue
                    self._backlog.setdefault(key.data, []).append(data)
                self._deliver_backlog((client, upstream), held=self._holding.is_set())
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            self._close_pair(client, upstream)

    def _deliver_backlog(self, pair: tuple[socket.socket, socket.socket], held: bool) -> None:
        """Send what each side of `pair` has waiting, in order, unless the proxy holds it."""
        if held:
            return
        for destination in pair:
            for data in self._backlog.pop(destination, []):
                destination.sendall(data)

    def _close_pair(self, client: socket.socket, upstream: socket.socket) -> None:
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            if (client, upstream) in self._pairs:
                self._pairs.remove((client, upstream))
        for sock in (client, upstream):
            self._backlog.pop(sock, None)

    def cut(self) -> None:
        """Reset every connection and refuse new ones, like a server that went away."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone leaves it listening until the accept loop's accept() times out,
            # and a client connecting meanwhile would be let through; shutdown() stops it now.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for client, upstream in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def silence(self) -> None:
        """From now on nothing is forwarded either way and new clients are never answered."""
        self._silent.set()

    @property
    def refusing(self) -> bool:
        """Whether it is cut (refusing new clients) and waits for `restore()`."""
        return self._listener is None

    def hold(self) -> None:
        """A silent partition: keep what either side sends, and let new clients wait."""
        self._holding.set()

    def release(self) -> None:
        """Heal a `hold()`: deliver what was kept, late and in order, and admit the waiting."""
        with self._lock:
            self._holding.clear()
            waiting, self._waiting = self._waiting, []
        for client in waiting:
            self._forward(client)

    def restore(self) -> None:
        self._listen()

    def retarget(self, target: tuple[str, int] | str) -> None:
        """Point at another server (a virtual IP moved to a promoted standby): every open
        connection is reset, new ones reach `target`."""
        self.cut()
        self.target = target
        self.restore()

    def close(self) -> None:
        self._running = False
        self.cut()
        for held in [*self._held, *self._waiting]:
            with contextlib.suppress(OSError):
                held.close()
