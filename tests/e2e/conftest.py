"""End-to-end tests leave nothing running behind them, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from tests.support.delay_proxy import DelayProxy
from tests.support.servers import broker_target, database_target


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    """A test ends every process it started. Those running before it (a module's shared
    servers and nodes) are their fixture's to end, and so is anything below them, such as a
    PostgreSQL backend for a connection the test made."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    left = [
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.pid not in before and _running(child) and not _below(child, before)
    ]
    assert not left, f"processes left running: {left}"


def _running(process: psutil.Process) -> bool:
    """Whether a process runs (a zombie has ended)."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _below(process: psutil.Process, pids: set[int]) -> bool:
    """Whether one of the process's ancestors is among `pids`."""
    try:
        return any(parent.pid in pids for parent in process.parents())
    except psutil.NoSuchProcess:
        return False


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
