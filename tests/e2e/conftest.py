"""End-to-end tests leave nothing running behind them, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from tests.support.delay_proxy import DelayProxy
from tests.support.servers import broker_target, database_target


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    """A test ends every process it started (a module's shared servers and nodes, started
    before it, are its fixture's to end)."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    children = psutil.Process().children(recursive=True)
    workers = [
        child.pid
        for child in children
        if child.pid not in before and child.is_running() and child.status() != "zombie"
    ]
    assert not workers, f"processes left running: {workers}"


@pytest.fixture
def far_proxies(database_url: str, broker_url: str) -> Iterator[tuple[DelayProxy, DelayProxy]]:
    """Delay proxies that put a node 150 ms (round trip) from PostgreSQL and from Redis."""
    db_proxy = DelayProxy(database_target(database_url), one_way_delay=0.075)
    broker_proxy = DelayProxy(broker_target(broker_url), one_way_delay=0.075)
    try:
        yield db_proxy, broker_proxy
    finally:
        db_proxy.close()
        broker_proxy.close()
