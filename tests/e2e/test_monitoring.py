"""Flower and the cluster metrics, over HTTP, against real worker processes."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import requests

from tests.support.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(cluster: Cluster, command: list[str], url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def answers() -> bool:
        try:
            return requests.get(url, timeout=1).status_code > 0
        except requests.RequestException:
            return False

    wait_until(answers, 60, f"{url} to answer")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_flower_refuses_anonymous_requests_and_lists_every_node(cluster):
    cluster.start_live("a", "r1")
    cluster.start_live("b", "r2")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = serve(
        cluster,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--basic-auth=operator:s3cret",
        ],
        base + "/healthcheck",
    )
    try:
        assert requests.get(base + "/", timeout=5).status_code == 401
        assert requests.get(base + "/api/workers", timeout=5).status_code == 401

        def workers() -> dict:
            answer = requests.get(
                base + "/api/workers?refresh=1", auth=("operator", "s3cret"), timeout=20
            )
            listed = answer.json() if answer.ok else {}
            return listed if {name.split("@")[0] for name in listed} >= {"a", "b"} else {}

        listed = wait_until(workers, 60, "Flower to list both workers")
        queues = {
            name.split("@")[0]: {q["name"] for q in info.get("active_queues") or []}
            for name, info in listed.items()
        }
        assert "node.a" in queues["a"] and "node.b" in queues["b"]
    finally:
        stop(flower)


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
