"""Connections to the shared database: at most two per process, every wait bounded.

A threads or solo node (one process) has two engines of one kept connection each: one for
the heartbeat (so it never waits behind service work) and one that the other tasks share
(their transactions are short). A second task that needs the database meanwhile gets one
more connection, closed when it is done (a far node pays a dozen round trips for it), and
a third waits. On prefork, each pool process runs one task at a time and keeps one
connection: one per pool process.

No session-level setting is made at connect time: PgBouncer in transaction mode would
refuse or drop it. Every transaction carries its own bounds instead, sent in the same
message as its `BEGIN` (no extra round trip), and no statement is prepared. A forked pool
child must not reuse its parent's sockets, so engines are keyed by process id and rebuilt
after a fork (`worker_process_init` forgets the inherited ones).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from threading import Lock
from typing import Any, TypeVar

import psycopg
from psycopg.errors import UndefinedColumn, UndefinedFunction, UndefinedTable
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError

from workers.errors import DatabaseUnavailable, first_line
from workers.settings import Settings, mask_url, tls
from workers.settings.timing import (
    answer_deadline,
    connect_timeout,
    heartbeat_pool_wait,
    idle_transaction_ms,
)
from workers.stores.watchdog import answered_within, watch_statements

HEARTBEAT = "heartbeat"
WORK = "work"
_engines: dict[tuple[int, str, float, str], Engine] = {}
_lock = Lock()
_broken_at: dict[str, float] = {}
_encrypted: dict[str, bool] = {}


def note_broken(url: str) -> None:
    """This process found its connection to `url` broken, or could not connect."""
    _broken_at[url] = time.monotonic()


def broken_at(url: str) -> float | None:
    """When (monotonic) this process last found `url` broken, or None."""
    return _broken_at.get(url)


def encrypted(url: str) -> bool | None:
    """Whether this process's last connection to `url` was encrypted (TLS); None before any."""
    return _encrypted.get(url)


def _on_connect(url: str, driver: Any, _record: Any) -> None:
    """Note whether the new connection is encrypted: libpq knows, no round trip."""
    _encrypted[url] = bool(driver.pgconn.ssl_in_use)


def _on_error(url: str, context: Any) -> None:
    """A lost connection, or one that could not be made, is a break (a timeout is not)."""
    if context.is_disconnect or context.connection is None:
        note_broken(url)


def engine_for(settings: Settings, url: str | None = None, purpose: str = WORK) -> Engine:
    """This process's engine for the URL (the node's by default), created on first use."""
    url = url or settings.require_database_url()
    if settings.pool == "prefork":
        purpose = WORK
    key = (os.getpid(), url, settings.database_timeout, purpose)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create_engine(settings, url, purpose)
        return engine


def _create_engine(settings: Settings, url: str, purpose: str) -> Engine:
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=1,
        max_overflow=0 if purpose == HEARTBEAT else 1,
        pool_timeout=heartbeat_pool_wait(settings) if purpose == HEARTBEAT else 30.0,
        pool_recycle=-1 if purpose == HEARTBEAT else 300,
        connect_args={
            "connect_timeout": connect_timeout(settings),
            "application_name": f"failover:{settings.node_name or 'cli'}:{os.getpid()}:{purpose}",
            "prepare_threshold": None,
            **TCP_LIMITS,
        },
    )
    watch_statements(engine, answer_deadline(settings))
    event.listen(engine, "handle_error", functools.partial(_on_error, url))
    event.listen(engine, "connect", functools.partial(_on_connect, url))
    return engine


TCP_LIMITS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
"""A server that vanished (no RST: powered off, partitioned) is found by TCP within about
10 s even while nothing is sent; the watchdog (`workers.stores.watchdog`) bounds each answer."""


def begin_bounded(settings: Settings) -> str:
    """`BEGIN` and the bounds of one transaction, sent as one message: statement and lock
    waits end at the database timeout, and a transaction left idle (a frozen process)
    ends at the lease, so it can never hold a row lock past it."""
    idle_ms = idle_transaction_ms(settings)
    return f"BEGIN; {bounded(settings)}SET LOCAL idle_in_transaction_session_timeout = {idle_ms}"


def forget_inherited_engines() -> None:
    """Drop engines created by a parent process without closing the parent's sockets."""
    with _lock:
        for key, engine in list(_engines.items()):
            if key[0] != os.getpid():
                engine.dispose(close=False)
                del _engines[key]


def close_idle_connections() -> None:
    """Close this process's idle connections (a prefork main process, once registered)."""
    with _lock:
        for key, engine in _engines.items():
            if key[0] == os.getpid():
                engine.pool.dispose()


def connect_ahead(settings: Settings) -> None:
    """Open this process's first connection in the background, so that a far node's first
    heartbeat in a new pool process does not pay the connection set-up (a dozen round trips:
    TCP, start-up, authentication, the dialect's first queries) inside its lease."""

    def connect() -> None:
        with contextlib.suppress(Exception), engine_for(settings, purpose=HEARTBEAT).connect():
            pass

    threading.Thread(target=connect, name="failover-connect-ahead", daemon=True).start()


@contextmanager
def transaction(settings: Settings, url: str | None = None) -> Iterator[Connection]:
    """A transaction on the shared database; an unreachable database becomes one clear error.

    The connection is in autocommit mode and the transaction is opened by hand with its
    bounds (`begin_bounded`); `COMMIT` (or `ROLLBACK`) ends it when the block does. Every
    statement, `COMMIT` included, is answered within `answer_deadline` or fails.
    """
    engine = engine_for(settings, url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(begin_bounded(settings))
            yield connection
            connection.exec_driver_sql("COMMIT")
    except DBAPIError as error:
        raise _clear_error(engine, error) from None


def _clear_error(engine: Engine, error: DBAPIError) -> Exception:
    """One clear line for what a node or an operator can act on; other errors as they are."""
    if isinstance(error, OperationalError) or error.connection_invalidated:
        line = _first_line(error)
        if tls.database_failure(line):
            return DatabaseUnavailable(f"TLS to the database at {_shown(engine)} failed: {line}")
        return DatabaseUnavailable(f"database unavailable at {_shown(engine)}: {line}")
    if isinstance(error.orig, UndefinedTable):
        return DatabaseUnavailable(
            f"no failover schema in {_shown(engine)}: run `failover db upgrade` first"
        )
    if isinstance(error.orig, UndefinedColumn | UndefinedFunction):
        return DatabaseUnavailable(
            f"the failover schema in {_shown(engine)} is older than this version: "
            "run `failover db upgrade`"
        )
    return error


def bounded(settings: Settings) -> str:
    """The `SET LOCAL`s that bound one transaction's waits: carried in the transaction itself,
    not in connect-time options, so they cost no round trip and survive PgBouncer."""
    timeout_ms = int(settings.database_timeout * 1000)
    return f"SET LOCAL statement_timeout = {timeout_ms}; SET LOCAL lock_timeout = {timeout_ms}; "


def one_round_trip(
    settings: Settings, statement: str, params: Mapping[str, object], purpose: str = WORK
) -> object:
    """Run `statement` as its own transaction in one message: one network round trip.

    The parameters are bound on the client and sent with the bounds of `bounded` as one
    simple query, which PostgreSQL runs as one implicit transaction (committed at its end,
    rolled back on any error). Returns the first column of the statement's first row.
    A connection found dead (the database restarted or failed over) is dropped and the
    statement is tried once more on a new one: no ping before every use (a round trip each).
    """

    def send(driver: psycopg.Connection[Any], bounds: str) -> object:
        return _send(driver, bounds, statement, params)

    return _in_one_message(settings, purpose, send)


Statement = tuple[str, Mapping[str, object]]
"""A statement with SQLAlchemy-style `:name` parameters, and their values."""


def round_trip(
    settings: Settings, statements: Sequence[Statement], purpose: str = WORK
) -> list[list[tuple[Any, ...]]]:
    """Run `statements`, in order, as one transaction in one message (one round trip): each
    sees what the ones before it wrote, and an error in any rolls all of them back. Returns
    each statement's rows ([] for one that returns none)."""

    def send(driver: psycopg.Connection[Any], bounds: str) -> list[list[tuple[Any, ...]]]:
        return _send_all(driver, bounds, statements)

    return _in_one_message(settings, purpose, send)


T = TypeVar("T")
OWN_ERRORS = "FO"
"""The SQLSTATE class of the errors the schema's own functions raise (the fence's refusals):
answers, not an unavailable database."""


def _in_one_message(
    settings: Settings, purpose: str, send: Callable[[psycopg.Connection[Any], str], T]
) -> T:
    """`send` on a pooled connection, once more on a new one if it was found dead."""
    engine = engine_for(settings, purpose=purpose)
    deadline = answer_deadline(settings)
    for attempt in (1, 2):
        try:
            return _on_pooled_connection(engine, bounded(settings), send, deadline)
        except _DeadConnection as dead:
            note_broken(settings.require_database_url())
            if attempt == 2:
                shown = _shown(engine)
                raise DatabaseUnavailable(f"database unavailable at {shown}: {dead}") from None
        except UndefinedFunction:
            raise DatabaseUnavailable(
                f"the failover schema in {_shown(engine)} is older than this version: "
                "run `failover db upgrade`"
            ) from None
        except psycopg.Error as error:
            if (error.sqlstate or "").startswith(OWN_ERRORS) or not isinstance(
                error, psycopg.OperationalError
            ):
                raise
            raise DatabaseUnavailable(
                f"database unavailable at {_shown(engine)}: {first_line(error)}"
            ) from None
        except OperationalError as error:
            raise DatabaseUnavailable(
                f"database unavailable at {_shown(engine)}: {first_line(error)}"
            ) from None
    raise AssertionError("unreachable")


class _DeadConnection(Exception):
    """A pooled connection turned out dead (the server restarted or failed over)."""


def _on_pooled_connection(
    engine: Engine,
    bounds: str,
    send: Callable[[psycopg.Connection[Any], str], T],
    deadline: float,
) -> T:
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        try:
            with answered_within(driver.pgconn.socket, deadline):
                return send(driver, bounds)
        except psycopg.OperationalError as error:
            if not driver.broken:
                raise
            connection.invalidate()
            raise _DeadConnection(first_line(error)) from None


def _send(
    driver: psycopg.Connection[Any], bounds: str, statement: str, params: Mapping[str, object]
) -> object:
    query = bounds + psycopg.ClientCursor(driver).mogrify(statement, params)
    cursor = driver.execute(query)
    while cursor.description is None and cursor.nextset():
        pass
    row = cursor.fetchone()
    return row[0] if row else None


BOUNDS = 2
NAMED = re.compile(r"(?<![:\w]):(\w+)")


def _pyformat(sql: str) -> str:
    """A statement written with SQLAlchemy's `:name` parameters in psycopg's `%(name)s`."""
    return NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


"""How many statements `bounded` sends ahead of a message's own."""


def _send_all(
    driver: psycopg.Connection[Any], bounds: str, statements: Sequence[Statement]
) -> list[list[tuple[Any, ...]]]:
    client = psycopg.ClientCursor(driver)
    query = bounds + "; ".join(client.mogrify(_pyformat(sql), params) for sql, params in statements)
    cursor = driver.execute(query)
    results: list[list[tuple[Any, ...]]] = []
    while True:
        results.append(list(cursor.fetchall()) if cursor.description is not None else [])
        if not cursor.nextset():
            break
    return results[BOUNDS:]


def _shown(engine: Engine) -> str:
    return mask_url(engine.url.render_as_string(hide_password=True))


def _first_line(error: DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0] if error.orig else str(error)


def migrations_dir() -> Path:
    """The Alembic folder: `workers/_migrations` in a wheel, `schema/` in a checkout."""
    packaged = Path(__file__).parents[1] / "_migrations"
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "schema"


def upgrade_schema(settings: Settings, revision: str = "head") -> str:
    """Create or migrate the schema to `revision` (the newest by default); return it."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    url = settings.admin_database_url or settings.require_database_url()
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with transaction(settings, url) as connection:
        connection.execution_options(answer_deadline=None)
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL lock_timeout = 0"))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        current = MigrationContext.configure(connection).get_current_revision()
    return current or "none"
