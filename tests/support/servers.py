"""Real PostgreSQL and Redis for the tests: the machine's (FAILOVER_TEST_*_URL) or embedded ones.

Each test gets a database of its own, created from the migrations and dropped afterwards,
and a broker database emptied before and after it (as RQ's tests do with Redis).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from workers.settings import load_settings
from workers.stores.database import upgrade_schema
from workers.testing.embedded import embedded_servers

Target = tuple[str, int] | str


@dataclass(frozen=True)
class Servers:
    admin_database_url: str
    broker_url: str
    embedded: bool
    template: str | None = None
    """A database migrated to head once, which `fresh_database` copies for each test."""


def start_servers(stack: ExitStack) -> Servers:
    """The machine's servers (FAILOVER_TEST_*_URL), else embedded ones of this process's own.

    Under pytest-xdist each worker is a process of its own: it starts its own embedded
    servers, or takes a Redis database of its own on the machine's server (`per_worker`)."""
    database_url = os.environ.get("FAILOVER_TEST_DATABASE_URL")
    broker_url = os.environ.get("FAILOVER_TEST_BROKER_URL")
    embedded = None
    if database_url and broker_url:
        broker_url = per_worker(broker_url, os.environ.get("PYTEST_XDIST_WORKER"))
    else:
        embedded = stack.enter_context(embedded_servers())
    admin_database_url = load_settings(
        database_url=database_url or embedded.database_url  # type: ignore[union-attr]
    ).require_database_url()
    return Servers(
        admin_database_url=admin_database_url,
        broker_url=broker_url or embedded.broker_url,  # type: ignore[union-attr]
        embedded=embedded is not None,
        template=stack.enter_context(migrated_template(admin_database_url)),
    )


def per_worker(broker_url: str, worker: str | None) -> str:
    """The Redis database of xdist worker `worker` ("gw0", "gw1", ...): the URL's own for
    gw0, one below it for gw1, and so on (wrapping at 0 to 15), so that no two workers empty
    each other's broker. Without xdist (`worker` None), the URL unchanged."""
    if not worker:
        return broker_url
    index = int(worker.removeprefix("gw"))
    parts = urlsplit(broker_url)
    if broker_url.startswith("redis+socket://"):
        db = (int(parse_qs(parts.query).get("virtual_host", ["0"])[0]) - index) % 16
        return f"redis+socket://{parts.path}?virtual_host={db}"
    db = (int(parts.path.lstrip("/") or "0") - index) % 16
    return urlunsplit(parts._replace(path=f"/{db}"))


HEAD_REVISION = max(
    path.name[:4] for path in (Path(__file__).parents[2] / "schema" / "versions").glob("[0-9]*.py")
)
"""The newest revision in `schema/versions`, which `failover db upgrade` ends at."""


@contextmanager
def migrated_template(admin_database_url: str) -> Iterator[str]:
    """A database migrated to head, to be copied (`CREATE DATABASE ... TEMPLATE`): running
    every migration once per session instead of once per test. Dropped afterwards."""
    name = f"failover_template_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_database_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(admin_database_url).set(database=name)
            upgrade_schema(load_settings(database_url=url.render_as_string(hide_password=False)))
            with admin.connect() as connection:
                # a database is copied only while nobody is connected to it: end the session
                # the migration's engine keeps in its pool
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
            yield name
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def fresh_database(servers: Servers, revision: str = "head") -> Iterator[str]:
    """A new database with the schema migrated in; dropped (connections and all) afterwards.

    At head it is a copy of the session's migrated template, when there is one."""
    name = f"failover_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        servers.admin_database_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )
    copy = servers.template if revision == "head" else None
    with admin.connect() as connection:
        template = f' TEMPLATE "{copy}"' if copy else ""
        connection.execute(text(f'CREATE DATABASE "{name}"{template}'))
    url = make_url(servers.admin_database_url).set(database=name)
    rendered = url.render_as_string(hide_password=False)
    if not copy:
        upgrade_schema(load_settings(database_url=rendered), revision)
    try:
        yield rendered
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_client(broker_url: str) -> redis.Redis:
    """A plain Redis client on the broker's server and database."""
    if broker_url.startswith("redis+socket://"):
        parts = urlsplit(broker_url)
        db = int(parse_qs(parts.query).get("virtual_host", ["0"])[0])
        return redis.Redis(unix_socket_path=parts.path, db=db)
    return redis.Redis.from_url(broker_url)


@contextmanager
def clean_broker(broker_url: str) -> Iterator[str]:
    client = redis_client(broker_url)
    client.flushdb()
    try:
        yield broker_url
    finally:
        client.flushdb()
        client.close()


def database_target(url: str) -> Target:
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "127.0.0.1"
    host = host if isinstance(host, str) else host[0]
    port = parsed.port or 5432
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def database_url_via(url: str, port: int) -> str:
    parsed = make_url(url).set(host="127.0.0.1", port=port, query={})
    return parsed.render_as_string(hide_password=False)


def broker_target(url: str) -> Target:
    parts = urlsplit(url)
    if url.startswith("redis+socket://"):
        return parts.path
    return (parts.hostname or "127.0.0.1", parts.port or 6379)


def broker_url_via(url: str, port: int) -> str:
    parts = urlsplit(url)
    if url.startswith("redis+socket://"):
        db = parse_qs(parts.query).get("virtual_host", ["0"])[0]
    else:
        db = parts.path.lstrip("/") or "0"
    return f"redis://127.0.0.1:{port}/{db}"
