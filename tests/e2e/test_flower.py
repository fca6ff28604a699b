"""Flower beside real nodes: what its pages show, and what it costs a far node.

Flower, by default, broadcasts `enable_events` to every worker every 5 s, and Celery's
workers obey it, which would make every node send a task event per task state (a publish
each, paid in full by a far node). The nodes refuse it while `FAILOVER_TASK_EVENTS` is
off (`workers/runtime/remote_control.py`), so these tests run Flower with its defaults, as an
operator who leaves out `--enable_events=False` would: the worst case.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.test_far_regions import LapseWatch
from tests.support.cluster import DEFAULT_TIMING, Cluster, wait_until
from tests.support.flower import flower, tasks_shown, workers_shown
from tests.support.servers import (
    broker_url_via,
    database_url_via,
)
from workers.runtime.remote_control import REFUSAL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
NODES = {"a": "eu-west", "b": "eu-west", "c": "us-east"}
REFUSED = "refused a remote enable_events"


def start_nodes(cluster: Cluster, **env: str) -> None:
    """Start the three nodes at once and wait until each has renewed its lease."""
    for name, region in NODES.items():
        cluster.start(name, region, **env)
    for name in NODES:
        wait_until(lambda name=name: cluster.renewed_since_start(name), 60, f"{name} to beat")


def refused(cluster: Cluster, name: str) -> int:
    """How many times node `name`'s log says it refused a remote enable_events."""
    node = cluster.running(name)
    assert node is not None, f"{name} is not running"
    return node.log().count(REFUSED)


def test_flower_shows_the_nodes_and_no_task_while_task_events_are_off(cluster):
    """Flower at its defaults, and `celery control enable_events` by hand: both refused."""
    # Given three nodes with task events off (the default), and Flower with its defaults
    start_nodes(cluster)
    with flower(cluster) as base:
        # When Flower's periodic enable_events has reached every node
        for name in NODES:
            wait_until(lambda name=name: refused(cluster, name), 30, f"{name} to refuse")
        # and every node has run heartbeats for more than another of Flower's periods
        # (5 s; a heartbeat every 0.3 s here), each one a task that would show
        cluster.beats("a", 20)
        # Then its workers page shows the three nodes and its task list stays empty
        assert wait_until(lambda: workers_shown(base) >= set(NODES), 20, "the workers page")
        assert tasks_shown(base) == {}
        # And each node said why once, however often Flower asked
        for name in NODES:
            assert refused(cluster, name) == 1
        assert REFUSAL in cluster.running("a").log()
    # When an operator sends the switch by hand, Then every node answers why it refuses
    answer = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "control", "enable_events"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    printed = answer.stdout + answer.stderr
    assert printed.count("FAILOVER_TASK_EVENTS=false") == len(NODES), printed
    for name in NODES:
        assert f"{name}@" in printed


def test_flower_shows_the_tasks_of_nodes_that_send_task_events(cluster):
    # Given three nodes with FAILOVER_TASK_EVENTS=true, and Flower
    start_nodes(cluster, FAILOVER_TASK_EVENTS="true")
    with flower(cluster) as base:
        # Then its task list fills with the nodes' tasks: heartbeats from every node and the
        # owner's service work
        def names_by_node() -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            for task in tasks_shown(base).values():
                node = (task.get("worker") or "").split("@")[0]
                found.setdefault(node, set()).add(task.get("name") or "")
            return found

        def every_node_seen() -> dict[str, set[str]]:
            found = names_by_node()
            ok = all("failover.heartbeat" in found.get(name, set()) for name in NODES)
            return found if ok else {}

        found = wait_until(every_node_seen, 30, "every node's heartbeats in Flower")
        owner = cluster.owners()["folder_monitor"][0]
        assert owner is not None
        wait_until(
            lambda: "failover.service_work" in names_by_node().get(owner, set()),
            20,
            "the owner's service work in Flower",
        )
        assert set(found) >= set(NODES)
        # And no node refused Flower's enable_events: its setting asked for task events
        for name in NODES:
            assert refused(cluster, name) == 0


def test_a_node_150_ms_away_keeps_its_round_trip_budget_while_flower_runs(
    database_url, broker_url, far_proxies, cluster
):
    db_proxy, broker_proxy = far_proxies
    far = {
        "FAILOVER_DATABASE_URL": database_url_via(database_url, db_proxy.port),
        "FAILOVER_BROKER_URL": broker_url_via(broker_url, broker_proxy.port),
    }
    cluster.configure(**DEFAULT_TIMING)
    # Given a near owner a and a standby c 150 ms from both stores, at default timings
    cluster.start_live("a", "near")
    wait_until(lambda: cluster.owned_by("a"), 30, "a to claim both services")
    cluster.start_live("c", "far", **far)
    with flower(cluster) as base:
        # When Flower runs beside them, its enable_events reaching c
        wait_until(lambda: refused(cluster, "c"), 30, "c to refuse Flower's enable_events")
        wait_until(lambda: workers_shown(base) >= {"a", "c"}, 20, "Flower to show a and c")
        watch = LapseWatch(cluster, "c")
        db_proxy.reset_counts()
        broker_proxy.reset_counts()
        cluster.beats("c", 10)
        per_beat = {
            "database": db_proxy.round_trips / 10,
            "broker": broker_proxy.round_trips / 10,
        }
        # Then c's heartbeat keeps the budget of a standby's (README, Far regions): one
        # database round trip, and two broker round trips plus Celery's worker heartbeat
        # every 2 s; task events would add three publishes per task, Flower's
        # enable_events (every 5 s) at most one delivery
        assert per_beat["database"] <= 1.5, per_beat
        assert per_beat["broker"] <= 3.5, per_beat
        # And its lease never lapsed, its heartbeat cycle stays under a third of it
        samples, lapses = watch.stop()
        assert samples > 10 and lapses == 0
        assert cluster.node_row("c").heartbeat_cycle_ms < 1000
        assert tasks_shown(base) == {}
