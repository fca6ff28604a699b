"""Invariants 4 and 9 end to end: broker and database outages, and Redis losing every message.

The nodes reach Redis and PostgreSQL through proxies that the test cuts: every connection
is reset and new ones are refused, as when the server stops. While a server is away every
lease goes stale; when it returns, no node may take anything over.
"""

from __future__ import annotations

import time

import pytest

from tests.support.cluster import FAST, Cluster, wait_until
from tests.support.proxy import FaultProxy
from tests.support.servers import (
    broker_target,
    broker_url_via,
    database_target,
    database_url_via,
    redis_client,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
LEASE = FAST.lease_timeout
SERVICES = {"folder_monitor", "app_script"}


def all_renewed_after(cluster: Cluster, names: list[str], moment) -> bool:
    rows = [cluster.node_row(name) for name in names]
    return all(row.lease_fresh and row.last_heartbeat_at > moment for row in rows)


def watch_for_takeovers(cluster: Cluster, seconds: float) -> None:
    """Keep checking, for `seconds`, that a still owns everything at epoch 1."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cluster.owners() == {service: ("a", 1) for service in SERVICES}
        time.sleep(0.2)


def test_broker_then_database_outage_causes_no_takeover(tmp_path, database_url, broker_url):
    db_proxy = FaultProxy(database_target(database_url))
    broker_proxy = FaultProxy(broker_target(broker_url))
    cluster = Cluster(
        tmp_path,
        database_url_via(database_url, db_proxy.port),
        broker_url_via(broker_url, broker_proxy.port),
    )
    observer = Cluster(tmp_path, database_url, broker_url)
    names = ["a", "b", "c"]
    try:
        # Given a owns both services and three nodes in two regions are live
        cluster.start_live("a", "r1")
        wait_until(lambda: observer.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        cluster.start_live("c", "r2")

        # When the broker goes away for several leases, losing every message it held
        broker_proxy.cut()
        time.sleep(3 * LEASE)
        redis_client(broker_url).flushdb()
        outage_end = observer.query("SELECT clock_timestamp() AS at")[0].at
        broker_proxy.restore()
        # Then every node comes back, and nobody took anything over
        wait_until(lambda: all_renewed_after(observer, names, outage_end), 60, "leases to renew")
        watch_for_takeovers(observer, 3 * LEASE)

        # When the database goes away for several leases
        db_proxy.cut()
        time.sleep(3 * LEASE)
        outage_end = observer.query("SELECT clock_timestamp() AS at")[0].at
        db_proxy.restore()
        # Then, again, every node comes back and nobody took anything over
        wait_until(lambda: all_renewed_after(observer, names, outage_end), 60, "leases to renew")
        watch_for_takeovers(observer, 3 * LEASE)
        assert len(observer.history()) == 2
        assert all(observer.node_row(name).is_active for name in names)
    finally:
        cluster.close()
        observer.close()
        db_proxy.close()
        broker_proxy.close()
