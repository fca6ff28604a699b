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
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import ExceptionContext

from workers.settings import Settings


def answer_deadline(settings: Settings) -> float:
    """How long a statement may go unanswered: the server's own bound (the database
    timeout), plus as much again and a second for the network and a busy client."""
    return 2 * settings.database_timeout + 1.0


class Watchdog:
    """Shuts down the socket `fd` after `seconds`, unless `stop` came first."""

    def __init__(self, fd: int, seconds: float) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._stopped = False
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            with contextlib.suppress(OSError):
                copy = socket.socket(fileno=os.dup(self._fd))
                try:
                    copy.shutdown(socket.SHUT_RDWR)
                finally:
                    copy.close()

    def stop(self) -> None:
        """The answer came: never touch the socket after this returns (its fd may be reused)."""
        with self._lock:
            self._stopped = True
        self._timer.cancel()


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
