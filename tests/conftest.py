"""Fixtures on real servers: PostgreSQL and Redis from FAILOVER_TEST_*_URL, else embedded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.cluster import FAST, Cluster
from tests.support.handlers import PASSTHROUGH
from tests.support.servers import Servers, clean_broker, fresh_database, start_servers
from workers.settings import Settings, load_settings


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with ExitStack() as stack:
        yield start_servers(stack)


@pytest.fixture
def database_url(servers: Servers) -> Iterator[str]:
    with fresh_database(servers) as url:
        yield url


@pytest.fixture
def broker_url(servers: Servers) -> Iterator[str]:
    with clean_broker(servers.broker_url) as url:
        yield url


@pytest.fixture
def settings(database_url: str, broker_url: str) -> Settings:
    return load_settings(
        database_url=database_url,
        broker_url=broker_url,
        heartbeat_interval=FAST.heartbeat_interval,
        lease_timeout=FAST.lease_timeout,
        database_timeout=FAST.database_timeout,
        child_env_passthrough=PASSTHROUGH,
    )


@pytest.fixture
def cluster(tmp_path: Path, database_url: str, broker_url: str) -> Iterator[Cluster]:
    running = Cluster(tmp_path, database_url, broker_url)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def handler_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `tests.support.handlers` log each call, for this test."""
    log = tmp_path / "handled.log"
    monkeypatch.setenv("TEST_HANDLER_LOG", str(log))
    return log
