"""Connections to the shared database: one engine per process, with timeouts on every session.

A forked pool child must not reuse its parent's sockets, so the engine is keyed by the
process id and rebuilt after a fork (and `worker_process_init` disposes the inherited one).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from threading import Lock
from typing import Any

import psycopg
from psycopg.errors import UndefinedColumn, UndefinedFunction, UndefinedTable
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from workers.errors import DatabaseUnavailable
from workers.settings import Settings

_engines: dict[tuple[int, str, float], Engine] = {}
_lock = Lock()


def engine_for(settings: Settings, url: str | None = None) -> Engine:
    """This process's engine for the URL (the node's by default), created on first use."""
    url = url or settings.require_database_url()
    key = (os.getpid(), url, settings.database_timeout)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create_engine(settings, url)
        return engine


def _create_engine(settings: Settings, url: str) -> Engine:
    """Every session bounds its waits; a frozen process cannot hold a row lock past its lease."""
    timeout_ms = int(settings.database_timeout * 1000)
    idle_ms = max(1000, int(settings.lease_timeout * 1000))
    options = (
        f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} "
        f"-c idle_in_transaction_session_timeout={idle_ms}"
    )
    return create_engine(
        url,
        pool_size=2,
        max_overflow=4,
        pool_recycle=300,
        connect_args={
            "options": options,
            "connect_timeout": max(2, math.ceil(settings.database_timeout * 2)),
            "application_name": f"failover:{settings.node_name or 'cli'}:{os.getpid()}",
            "prepare_threshold": None,
        },
    )


def forget_inherited_engines() -> None:
    """Drop engines created by a parent process without closing the parent's sockets."""
    with _lock:
        for key, engine in list(_engines.items()):
            if key[0] != os.getpid():
                engine.dispose(close=False)
                del _engines[key]


def connect_ahead(settings: Settings) -> None:
    """Open this process's first connection in the background, so that a far node's first
    heartbeat in a new pool process does not pay the connection set-up (a dozen round trips:
    TCP, start-up, authentication, the dialect's first queries) inside its lease."""

    def connect() -> None:
        with contextlib.suppress(Exception), engine_for(settings).connect():
            pass

    threading.Thread(target=connect, name="failover-connect-ahead", daemon=True).start()


@contextmanager
def transaction(settings: Settings, url: str | None = None) -> Iterator[Connection]:
    """A transaction on the shared database; an unreachable database becomes one clear error."""
    engine = engine_for(settings, url)
    try:
        with engine.begin() as connection:
            yield connection
    except OperationalError as error:
        raise DatabaseUnavailable(
            f"database unavailable at {_shown(engine)}: {_first_line(error)}"
        ) from None
    except ProgrammingError as error:
        if isinstance(error.orig, UndefinedTable):
            raise DatabaseUnavailable(
                f"no failover schema in {_shown(engine)}: run `failover db upgrade` first"
            ) from None
        if isinstance(error.orig, UndefinedColumn):
            raise DatabaseUnavailable(
                f"the failover schema in {_shown(engine)} is older than this version: "
                "run `failover db upgrade`"
            ) from None
        raise


def bounded(settings: Settings) -> str:
    """The `SET LOCAL`s that bound one transaction's waits: carried in the transaction itself,
    not in connect-time options, so they cost no round trip and survive PgBouncer."""
    timeout_ms = int(settings.database_timeout * 1000)
    return f"SET LOCAL statement_timeout = {timeout_ms}; SET LOCAL lock_timeout = {timeout_ms}; "


def one_round_trip(settings: Settings, statement: str, params: Mapping[str, object]) -> object:
    """Run `statement` as its own transaction in one message: one network round trip.

    The parameters are bound on the client and sent with the bounds of `bounded` as one
    simple query, which PostgreSQL runs as one implicit transaction (committed at its end,
    rolled back on any error). Returns the first column of the statement's first row.
    A connection found dead (the database restarted or failed over) is dropped and the
    statement is tried once more on a new one: no ping before every use (a round trip each).
    """
    engine = engine_for(settings)
    for attempt in (1, 2):
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            try:
                return _send(driver, bounded(settings), statement, params)
            except psycopg.OperationalError as error:
                connection.invalidate()
                if attempt == 2 or not driver.broken:
                    raise DatabaseUnavailable(
                        f"database unavailable at {_shown(engine)}: {_first_line_of(error)}"
                    ) from None
            except UndefinedFunction:
                raise DatabaseUnavailable(
                    f"the failover schema in {_shown(engine)} is older than this version: "
                    "run `failover db upgrade`"
                ) from None
    raise AssertionError("unreachable")


def _send(
    driver: psycopg.Connection[Any], bounds: str, statement: str, params: Mapping[str, object]
) -> object:
    driver.autocommit = True
    try:
        query = bounds + psycopg.ClientCursor(driver).mogrify(statement, params)
        cursor = driver.execute(query)
        while cursor.description is None and cursor.nextset():
            pass
        row = cursor.fetchone()
        return row[0] if row else None
    finally:
        if not driver.broken and not driver.closed:
            driver.autocommit = False


def _first_line_of(error: Exception) -> str:
    text_ = str(error).strip()
    return text_.splitlines()[0] if text_ else type(error).__name__


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _first_line(error: DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0] if error.orig else str(error)


def migrations_dir() -> Path:
    """The Alembic folder: `workers/_migrations` in a wheel, `schema/` in a checkout."""
    packaged = Path(__file__).parent / "_migrations"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "schema"


def upgrade_schema(settings: Settings, revision: str = "head") -> str:
    """Create or migrate the schema to `revision` (the newest by default); return it."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    url = settings.admin_database_url or settings.require_database_url()
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with transaction(settings, url) as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL lock_timeout = 0"))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        current = MigrationContext.configure(connection).get_current_revision()
    return current or "none"
