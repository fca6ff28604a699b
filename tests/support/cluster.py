"""The test view of a local cluster: `workers.testing.local_cluster` plus fast timings and CLI helpers.

Every process is killed when the test ends, pass or fail (the `cluster` fixture and each
test's `finally` call `close()`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.handlers import PASSTHROUGH
from workers.testing.local_cluster import LocalCluster, LocalNode
from workers.testing.waiting import wait_until


@dataclass(frozen=True)
class Timing:
    """A node's timings, in seconds: the one place the tests' timings are set."""

    heartbeat_interval: float
    lease_timeout: float
    database_timeout: float
    cross_region_delay: float

    def env(self) -> dict[str, str]:
        """As a node's environment."""
        return {
            "FAILOVER_HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
            "FAILOVER_LEASE_TIMEOUT": str(self.lease_timeout),
            "FAILOVER_DATABASE_TIMEOUT": str(self.database_timeout),
            "FAILOVER_CROSS_REGION_DELAY": str(self.cross_region_delay),
        }


DEFAULT = Timing(
    heartbeat_interval=1.0, lease_timeout=3.0, database_timeout=0.5, cross_region_delay=1.0
)
"""The product's default timings, written out: tests of what a far node keeps at defaults."""

FAST = Timing(
    heartbeat_interval=0.3, lease_timeout=1.5, database_timeout=0.3, cross_region_delay=0.5
)
"""The tests' own: a lease runs out in 1.5 s (the `settings` fixture and `Cluster`)."""

STORE_FAILOVER = Timing(
    heartbeat_interval=0.5, lease_timeout=3.0, database_timeout=0.5, cross_region_delay=0.5
)
"""While a store fails over (`tests/e2e/test_store_failover.py`): a lease outlasts a promotion."""

DEFAULT_TIMING = DEFAULT.env()

FAST_TIMING = {
    **FAST.env(),
    "FAILOVER_LOG_LEVEL": "INFO",
    "FAILOVER_CHILD_ENV_PASSTHROUGH": json.dumps(PASSTHROUGH),
}


class Cluster(LocalCluster):
    def __init__(self, tmp_path: Path, database_url: str, broker_url: str, **env: str) -> None:
        super().__init__(tmp_path, database_url, broker_url, {**FAST_TIMING, **env})

    def configure(self, **env: str) -> None:
        """Settings for every node started from now on: the `cluster` fixture's cluster is made
        with the fast timings, before the test says what else it needs."""
        self.env.update(env)

    def start_live(self, name: str, region: str, *extra: str, **env: str) -> LocalNode:
        try:
            return super().start_live(name, region, *extra, **env)
        except TimeoutError as error:
            raise AssertionError(str(error)) from None

    def beats(self, name: str, count: int = 3) -> None:
        """Let `name` beat `count` more times (seen in the database, not on a clock)."""
        for _ in range(count):
            before = self.node_row(name).last_heartbeat_at
            wait_until(
                lambda before=before: self.node_row(name).last_heartbeat_at > before,
                20,
                f"{name} to beat",
            )

    def lapsed(self, name: str) -> None:
        """Wait until `name`'s lease has run out (so the name may be registered again)."""
        wait_until(lambda: not self.node_row(name).lease_fresh, 10, f"{name}'s lease to lapse")

    def cli(
        self, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `failover ARGS` as an operator would, with this cluster's settings (and `env`)."""
        return subprocess.run(
            [sys.executable, "-m", "workers", *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )

    def dump(self) -> list[Any]:
        """What a refused command must leave untouched: ownership, history, maintenance flags."""
        return [
            self.query("SELECT * FROM service_status ORDER BY id"),
            self.query("SELECT * FROM ownership_history ORDER BY id"),
            self.query("SELECT node_name, draining, region FROM server_registry ORDER BY id"),
        ]
