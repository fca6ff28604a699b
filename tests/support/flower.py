"""Flower (and other HTTP servers a test starts) as real processes, asked over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import requests

from tests.support.cluster import Cluster, wait_until

AUTH = ("operator", "s3cret")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(
    cluster: Cluster, command: list[str], url: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` with the cluster's settings (`env` instead, if given); return once
    `url` answers."""
    process = subprocess.Popen(
        command,
        env=cluster.env if env is None else dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


@contextmanager
def flower(cluster: Cluster, *extra: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`celery -A workers flower` with basic auth (and `extra` options), as an operator runs
    it, with the cluster's settings (`env` instead, if given: another broker user); its base
    URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}",
        "--address=127.0.0.1", f"--basic-auth={AUTH[0]}:{AUTH[1]}", *extra,
    ]  # fmt: skip
    process = serve(cluster, command, base + "/healthcheck", env)
    try:
        yield base
    finally:
        stop(process)


def workers_listed(base: str, names: set[str]) -> dict:
    """Flower's workers (asked afresh), once every node in `names` is among them; else {}."""
    try:
        answer = requests.get(base + "/api/workers?refresh=1", auth=AUTH, timeout=20)
    except requests.RequestException:
        return {}
    listed = answer.json() if answer.ok else {}
    return listed if {name.split("@")[0] for name in listed} >= names else {}


def workers_shown(base: str) -> set[str]:
    """The nodes on Flower's workers page (`/workers?json=1`): built from the events Flower
    receives, the workers' own heartbeats, which stay on whatever the task events."""
    answer = requests.get(base + "/workers?json=1", auth=AUTH, timeout=5)
    answer.raise_for_status()
    return {worker["hostname"].split("@")[0] for worker in answer.json()["data"]}


def tasks_shown(base: str) -> dict[str, dict]:
    """Flower's task list (`/api/tasks`, what its tasks page shows), by task id."""
    answer = requests.get(base + "/api/tasks", auth=AUTH, timeout=5)
    answer.raise_for_status()
    return dict(answer.json())


def queue_lengths(base: str) -> dict[str, int]:
    """Flower's queue lengths (`/api/queues/length`, what its broker page shows), by queue:
    Flower asks the broker itself, with its own Redis client."""
    answer = requests.get(base + "/api/queues/length", auth=AUTH, timeout=10)
    answer.raise_for_status()
    return {queue["name"]: queue["messages"] for queue in answer.json()["active_queues"]}
