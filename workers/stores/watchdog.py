"""A client-side deadline for a database answer: the socket is shut down when it passes.

A server that vanishes without closing its connections (powered off, partitioned away, a
load balancer that accepts and never answers) leaves a client waiting on its socket for as
long as TCP keeps the connection, which can be forever when something still acknowledges
the packets. `statement_timeout` cannot help (the server is gone) and psycopg has no
client-side timeout, so a watchdog shuts the socket down: the waiting call then fails at
once like any dead connection, the connection is dropped, and the next one goes to
whichever host of a multi-host URL now answers.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import ExceptionContext


class Watchdog:
    """Shuts down the socket `fd` once `seconds` pass, unless `stop` came first.

    One thread per process watches every armed deadline (a heap), so arming one costs a
    lock and a push: a node runs thousands of statements a second when files pour in.
    """

    _heap: ClassVar[list[tuple[float, int, Watchdog]]] = []
    _lock: ClassVar[threading.Condition] = threading.Condition()
    _thread: ClassVar[threading.Thread | None] = None
    _count: ClassVar[int] = 0

    @classmethod
    def _forget_after_fork(cls) -> None:
        """A forked pool process starts with no deadline, a free lock and no thread."""
        cls._heap = []
        cls._lock = threading.Condition()
        cls._thread = None

    def __init__(self, fd: int, seconds: float) -> None:
        self._fd = fd
        self._stopped = False
        self.fired = False
        with Watchdog._lock:
            Watchdog._count += 1
            heapq.heappush(Watchdog._heap, (time.monotonic() + seconds, Watchdog._count, self))
            if Watchdog._thread is None or not Watchdog._thread.is_alive():
                Watchdog._thread = threading.Thread(
                    target=Watchdog._watch, name="failover-watchdog", daemon=True
                )
                Watchdog._thread.start()
            elif Watchdog._heap[0][2] is self:
                Watchdog._lock.notify()

    @staticmethod
    def _watch() -> None:
        with Watchdog._lock:
            while True:
                while Watchdog._heap and Watchdog._heap[0][2]._stopped:
                    heapq.heappop(Watchdog._heap)
                if not Watchdog._heap:
                    Watchdog._lock.wait()
                    continue
                deadline, _, watchdog = Watchdog._heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    Watchdog._lock.wait(left)
                    continue
                heapq.heappop(Watchdog._heap)
                watchdog._fire()

    def _fire(self) -> None:
        """Called with the lock held, so never after `stop` returned."""
        self.fired = True
        with contextlib.suppress(OSError):
            copy = socket.socket(fileno=os.dup(self._fd))
            try:
                copy.shutdown(socket.SHUT_RDWR)
            finally:
                copy.close()

    def stop(self) -> None:
        """The answer came: never touch the socket after this returns (its fd may be reused)."""
        with Watchdog._lock:
            self._stopped = True


os.register_at_fork(after_in_child=Watchdog._forget_after_fork)


@contextlib.contextmanager
def answered_within(fd: int, seconds: float | None) -> Iterator[Watchdog | None]:
    """Run the block with a watchdog on socket `fd` (none when `seconds` is None)."""
    if seconds is None or fd < 0:
        yield None
        return
    watchdog = Watchdog(fd, seconds)
    try:
        yield watchdog
    finally:
        watchdog.stop()


def watch_statements(engine: Engine, seconds: float) -> None:
    """Give every statement `engine` runs a watchdog of `seconds`, unless the connection's
    execution options say `answer_deadline=None` (a migration may run for minutes)."""

    def arm(connection: Connection, *_: Any) -> None:
        deadline = connection.get_execution_options().get("answer_deadline", seconds)
        driver = connection.connection.driver_connection
        fd = driver.pgconn.socket if isinstance(driver, psycopg.Connection) else -1
        if deadline is not None and fd >= 0:
            connection.info[WATCHDOG] = Watchdog(fd, deadline)

    def disarm(connection: Connection, *_: Any) -> None:
        watchdog = connection.info.pop(WATCHDOG, None)
        if watchdog is not None:
            watchdog.stop()

    def disarm_on_error(context: ExceptionContext) -> None:
        if context.connection is not None:
            disarm(context.connection)

    event.listen(engine, "before_cursor_execute", arm)
    event.listen(engine, "after_cursor_execute", disarm)
    event.listen(engine, "handle_error", disarm_on_error)


WATCHDOG = "failover_watchdog"
