"""End to end: real `failover worker` processes on real PostgreSQL and Redis, killed for real.

Timings are short (heartbeat 0.3 s, lease 1.5 s) and every wait is a poll on the database
with a generous limit: the tests assert what happened, never how fast.
"""

from __future__ import annotations

import pytest
from celery import Celery

from tests.support.cluster import wait_until
from tests.support.servers import redis_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]
SERVICES = {"folder_monitor", "app_script"}


def test_first_node_up_owns_everything_and_later_nodes_stay_standby(cluster):
    # Given node a starts first
    cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim both services")
    # When b and c join and beat a few times
    cluster.start_live("b", "r1")
    cluster.start_live("c", "r2")
    cluster.beats("b")
    cluster.beats("c")
    # Then a still owns both at epoch 1, claimed first come first served
    assert cluster.owners() == {service: ("a", 1) for service in SERVICES}
    assert {(h.to_node, h.reason) for h in cluster.history()} == {("a", "startup")}
    assert "standby" in cluster.node_row("b").last_verdict
    # And a (threads pool) holds at most two connections, both its own process's: one for
    # its heartbeat, one for its work
    names = [
        row.application_name
        for row in cluster.query(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
        )
        if row.application_name.startswith("failover:a:")
    ]
    assert 1 <= len(names) <= 2, names
    assert {name.split(":")[2] for name in names} == {str(cluster.nodes[0].pid)}, names
    assert {name.split(":")[3] for name in names} <= {"heartbeat", "work"}, names


def test_sigkill_of_the_owner_moves_its_services_same_region_first(cluster):
    cluster.configure(FAILOVER_CROSS_REGION_DELAY="30")
    # Given a (r1) owns both services, b is in r1 and c in r2
    a = cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    cluster.start_live("c", "r2")
    # When a crashes (SIGKILL: nothing is released)
    a.crash()
    # Then b, in a's region, takes every service at epoch + 1, and a is marked inactive
    wait_until(lambda: cluster.owned_by("b"), 30, "b to take over from a")
    assert cluster.owners() == {service: ("b", 2) for service in SERVICES}
    takeovers = [h for h in cluster.history() if h.epoch == 2]
    assert {(h.from_node, h.to_node, h.reason) for h in takeovers} == {("a", "b", "takeover")}
    wait_until(lambda: not cluster.node_row("a").is_active, 10, "a to be marked inactive")
    # And when b crashes too, c takes over at once: no live node is left in r1
    cluster.nodes[1].crash()
    wait_until(lambda: cluster.owned_by("c"), 20, "c to take over across regions")
    assert cluster.owners() == {service: ("c", 3) for service in SERVICES}
    # And a restarted a comes back as a standby: it does not take its services back
    cluster.start_live("a", "r1")
    cluster.beats("a", 5)
    assert cluster.owners() == {service: ("c", 3) for service in SERVICES}
    assert cluster.node_row("a").last_verdict.startswith("standby")


def test_sigterm_hands_over_without_waiting_for_the_lease(cluster):
    # Given a lease of 60 s, far longer than this test waits for the handover
    cluster.configure(FAILOVER_LEASE_TIMEOUT="60")
    a = cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    last_beat = cluster.node_row("a").last_heartbeat_at
    # When a gets SIGTERM (Celery's warm shutdown)
    assert a.terminate() == 0
    # Then it released both services, and b took them while a's lease was still running
    wait_until(lambda: cluster.owned_by("b"), 20, "b to take the released services")
    events = cluster.history()
    assert {(h.from_node, h.to_node, h.reason) for h in events if h.epoch == 2} == {
        ("a", None, "release")
    }
    assert {(h.from_node, h.to_node, h.reason) for h in events if h.epoch == 3} == {
        (None, "b", "takeover")
    }
    taken_at = max(h.changed_at for h in events)
    assert (taken_at - last_beat).total_seconds() < 60
    assert cluster.node_row("a").stopped_at is not None
    assert "released folder_monitor at epoch 2" in a.log()


def test_a_paused_owner_wakes_up_and_all_its_side_effects_are_rejected(cluster, broker_url):
    # Given a owns both services at epoch 1, with b standing by
    a = cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    # When a is frozen (SIGSTOP) with work at epoch 1 waiting in its queue
    a.pause()
    sender = Celery(broker=broker_url, set_as_current=False)
    sender.conf.update(task_serializer="json", accept_content=["json"])
    for _ in range(5):
        sender.send_task(
            "failover.service_work", ([("app_script", 1)],), queue="node.a", expires=300
        )
    wait_until(lambda: cluster.owned_by("b"), 30, "b to take over from the frozen a")
    applied_before_wake = cluster.ticks("app_script", 1)
    # And a wakes up (SIGCONT) and drains its queue
    a.resume()
    broker = redis_client(broker_url)
    wait_until(lambda: broker.llen("node.a") == 0, 30, "a to drain its queue")
    wait_until(lambda: "rejected stale work on app_script" in a.log(), 30, "a rejection")
    cluster.beats("a", 3)
    # Then not one of its side effects was applied, and it stands by
    assert cluster.ticks("app_script", 1) == applied_before_wake
    assert cluster.owners() == {service: ("b", 2) for service in SERVICES}
    assert cluster.node_row("a").last_verdict.startswith("standby")


def test_a_node_refuses_to_start_under_a_live_name(cluster):
    cluster.start_live("a", "r1")
    twin = cluster.start("a", "r1")
    assert twin.popen.wait(timeout=60) == 1
    output = twin.log().strip()
    assert output.startswith("failover: node a is already running")
    assert len(output.splitlines()) == 1


def test_an_unhealthy_application_stops_renewal_and_a_peer_takes_over(cluster):
    from tests.support.http import HealthServer

    with HealthServer() as app:
        # Given a's application answers its health check, and a owns everything
        cluster.start_live(
            "a", "r1", "--ip", "127.0.0.1", "--port", str(app.port), "--app-context", "/dcma"
        )
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        assert app.hits > 0 and app.paths == {"/dcma"}
        # When the application starts failing
        app.status = 503
        # Then a stops renewing its lease and b takes over
        wait_until(lambda: cluster.owned_by("b"), 30, "b to take over from unhealthy a")
        row = cluster.node_row("a")
        assert row.app_healthy is False
        assert "answered 503" in row.last_verdict


def test_plain_celery_worker_command_runs_a_node(cluster):
    import sys

    node = cluster.spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "-Q",
            "node.d",
            "--pool",
            "threads",
            "-c",
            "2",
        ],
        "d",
        FAILOVER_REGION="r9",
    )
    wait_until(lambda: cluster.renewed_since_start("d"), 60, "d to register and beat")
    assert cluster.node_row("d").region == "r9"
    wait_until(lambda: cluster.owned_by("d"), 20, "d to claim")
    assert node.alive()
