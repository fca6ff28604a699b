"""Flower and the cluster metrics, over HTTP, against real worker processes."""

from __future__ import annotations

import sys

import pytest
import requests

from tests.support.cluster import wait_until
from tests.support.flower import flower, free_port, queue_lengths, serve, stop, workers_listed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_flower_refuses_anonymous_requests_and_lists_every_node(cluster):
    cluster.start_live("a", "r1")
    cluster.start_live("b", "r2")
    with flower(cluster) as base:
        assert requests.get(base + "/", timeout=5).status_code == 401
        assert requests.get(base + "/api/workers", timeout=5).status_code == 401
        listed = wait_until(
            lambda: workers_listed(base, {"a", "b"}), 60, "Flower to list both workers"
        )
        queues = {
            name.split("@")[0]: {q["name"] for q in info.get("active_queues") or []}
            for name, info in listed.items()
        }
        assert "node.a" in queues["a"] and "node.b" in queues["b"]
        # And its broker page reads the nodes' queues from Redis
        assert {"node.a", "node.b"} <= set(queue_lengths(base))


def test_metrics_show_the_owner_before_and_after_a_takeover(cluster):
    a = cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    server = serve(cluster, [sys.executable, "-m", "workers", "metrics", "--port", str(port)], url)
    try:
        before = requests.get(url, timeout=5).text
        assert 'failover_service_owner{node="a",service="folder_monitor"} 1.0' in before
        assert 'failover_service_epoch{service="folder_monitor"} 1.0' in before
        assert "failover_database_up 1.0" in before
        a.crash()
        wait_until(lambda: cluster.owned_by("b"), 30, "b to take over")
        after = requests.get(url, timeout=5).text
        assert 'failover_service_owner{node="b",service="folder_monitor"} 1.0' in after
        assert (
            'failover_ownership_changes_total{reason="takeover",service="folder_monitor"} 1.0'
            in after
        )
        assert 'failover_node_live{node="a",region="r1"} 0.0' in after
    finally:
        stop(server)
