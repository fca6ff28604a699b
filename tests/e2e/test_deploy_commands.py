"""The command lines in deploy/ run a real cluster: parsed from the files, never copied."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.cluster import wait_until
from tests.unit.test_deploy import unit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
DEPLOY = Path(__file__).parents[2] / "deploy"
LOCAL = {"failover": [sys.executable, "-m", "workers"], "celery": [sys.executable, "-m", "celery"]}


def local(argv: list[str]) -> list[str]:
    """The same command with its program resolved in this environment (no /opt, no image)."""
    program = Path(argv[0]).name
    return [*LOCAL[program], *argv[1:]]


def env_file(name: str) -> dict[str, str]:
    """Settings of an example env file that make sense here: no addresses of other hosts."""
    pairs = (line.split("=", 1) for line in (DEPLOY / "env" / name).read_text().splitlines())
    skip = {
        "FAILOVER_DATABASE_URL",
        "FAILOVER_BROKER_URL",
        "FAILOVER_IP_ADDRESS",
        "FAILOVER_PORT_NUMBER",
    }
    return {
        key: value
        for key, value in (p for p in pairs if len(p) == 2)
        if not key.startswith("#") and key not in skip
    }


def test_systemd_worker_unit_command_runs_a_node(cluster):
    command = unit("failover-worker@.service")["Service"]["ExecStart"].replace("%i", "unit-a")
    cluster.spawn(local(shlex.split(command)), "unit-a", **env_file("node-a.env.example"))
    wait_until(lambda: cluster.renewed_since_start("unit-a"), 60, "the unit's node to beat")
    assert cluster.node_row("unit-a").region == "eu-west"
    wait_until(lambda: cluster.owned_by("unit-a"), 20, "the unit's node to claim")


def test_compose_commands_run_a_cluster_with_flower_behind_authentication(cluster):
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    migrated = subprocess.run(
        local(services["migrate"]["command"]), env=cluster.env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    for name in ("node-a", "node-b", "node-c"):
        cluster.spawn(local(services[name]["command"]), name)
    for node in ("a", "b", "c"):
        wait_until(lambda node=node: cluster.renewed_since_start(node), 60, f"{node} to beat")
    assert {cluster.node_row(n).region for n in "abc"} == {"eu-west", "us-east"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flower = [
        arg.replace("0.0.0.0", "127.0.0.1").replace("5555", str(port))
        for arg in services["flower"]["command"]
    ]
    cluster.spawn(local(flower), "flower", FLOWER_BASIC_AUTH="operator:s3cret")

    def answers() -> int:
        try:
            return requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code
        except requests.RequestException:
            return 0

    assert wait_until(answers, 60, "Flower to answer") == 401
    assert requests.get(f"http://127.0.0.1:{port}/", auth=("operator", "s3cret"), timeout=5).ok
    # And the shipped Flower (--enable_events=False) never asks the nodes for task events:
    # over more than one of Flower's 5 s periods, no node had a switch to refuse
    cluster.beats("a", 20)
    for name in ("node-a", "node-b", "node-c"):
        node = cluster.running(name)
        assert node is not None and "refused a remote enable_events" not in node.log()
