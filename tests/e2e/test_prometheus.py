"""A real Prometheus scrapes `failover metrics` of a real cluster and runs the shipped alerts.

Three real nodes (two in one region, one in another) at the default timings (heartbeat
1 s, lease 3 s, as in production), `failover metrics` as a process, and Debian's
`prometheus` scraping it every 0.5 s with `deploy/prometheus/failover-alerts.yml` loaded
(its `for:` durations shortened to 1 s, its expressions the shipped ones). The test asks
Prometheus, never the database, what it sees: the services without an owner before any
node starts, the owner series, and, when the owner is killed with SIGKILL, the alert that
must fire and the owner series naming the new owner.

Which alert must fire when an owner dies: `FailoverLeaseAboutToLapse`. Nobody marks a
node dead before its lease has run out, so a dead node's lease ages through its last
third while the node is still active, for a third of a lease (1 s here: two scrapes and
two evaluations). `FailoverLeaseLapsed` and `FailoverServiceWithoutLiveOwner` cover the
time from the lease's end to the takeover, which a same-region peer keeps under one
heartbeat: they may or may not be seen, so they are not asserted here (their promtool
unit tests cover them).
"""

from __future__ import annotations

import sys

import pytest

from tests.support.cluster import DEFAULT_TIMING, Cluster, wait_until
from tests.support.flower import free_port, serve, stop
from tests.support.prometheus import fires, firing, prometheus, query

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
REGIONS = {"a": "eu-west", "b": "eu-west", "c": "us-east"}


def owner_seen(base: str, service: str) -> str | None:
    """The node Prometheus's latest scrape names as the owner of `service`, if exactly one."""
    owners = {
        sample["node"]
        for sample in query(base, f'failover_service_owner{{service="{service}"}} == 1')
    }
    return owners.pop() if len(owners) == 1 else None


def live_seen(base: str) -> set[str]:
    """The nodes Prometheus's latest scrape says are live."""
    return {sample["node"] for sample in query(base, "failover_node_live == 1")}


def test_prometheus_sees_the_owner_and_fires_the_lease_alert_when_the_owner_is_killed(
    tmp_path, database_url, broker_url
):
    cluster = Cluster(tmp_path, database_url, broker_url, **DEFAULT_TIMING)
    port = free_port()
    exporter = serve(
        cluster,
        [sys.executable, "-m", "workers", "metrics", "--port", str(port)],
        f"http://127.0.0.1:{port}/metrics",
    )
    try:
        with prometheus(tmp_path, f"127.0.0.1:{port}") as base:
            # Given no node yet: both services have no owner, and the shipped alert says so
            for service in ("folder_monitor", "app_script"):
                wait_until(
                    lambda service=service: fires(
                        base, "FailoverServiceWithoutLiveOwner", service=service
                    ),
                    20,
                    f"FailoverServiceWithoutLiveOwner for {service}",
                )

            # When a starts, then b (its region) and c (another), Then a owns
            # folder_monitor, Prometheus names it, and no alert fires any more
            cluster.start_live("a", REGIONS["a"])
            wait_until(lambda: cluster.owned_by("a"), 20, "a to claim both services")
            for name in ("b", "c"):
                cluster.start(name, REGIONS[name])
            for name in ("b", "c"):
                wait_until(lambda name=name: cluster.renewed_since_start(name), 60, f"{name}")
            wait_until(lambda: owner_seen(base, "folder_monitor") == "a", 20, "owner series")
            wait_until(lambda: live_seen(base) == set(REGIONS), 20, "three live nodes")
            wait_until(lambda: not firing(base), 20, "no alert on a healthy cluster")

            # When the owner a is killed (SIGKILL: no release, its lease just stops)
            cluster.running("a").crash()

            # Then its lease alert fires, naming it, and the owner series names b, the peer
            # of its region that took folder_monitor over
            wait_until(
                lambda: fires(base, "FailoverLeaseAboutToLapse", node="a", region="eu-west"),
                20,
                "FailoverLeaseAboutToLapse for a",
            )
            wait_until(lambda: owner_seen(base, "folder_monitor") == "b", 20, "b's owner series")
            assert cluster.owners()["folder_monitor"][0] == "b"
            epochs = query(base, 'failover_service_epoch{service="folder_monitor"}')
            assert epochs and epochs[0]["value"] >= 2

            # And once a peer has marked it dead, its lease alerts are over
            wait_until(
                lambda: query(base, 'failover_node_active{node="a"} == 0'), 20, "a marked dead"
            )
            wait_until(
                lambda: not any(alert.get("node") == "a" for alert in firing(base)),
                20,
                "a's alerts to end",
            )
    finally:
        stop(exporter)
        cluster.close()
