"""The test view of a local cluster: `workers.testing.local_cluster` plus fast timings and CLI helpers.

Every process is killed when the test ends, pass or fail (the `cluster` fixture and each
test's `finally` call `close()`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.handlers import PASSTHROUGH
from workers.testing.local_cluster import LocalCluster, LocalNode
from workers.testing.waiting import wait_until

DEFAULT_TIMING = {
    "FAILOVER_HEARTBEAT_INTERVAL": "1.0",
    "FAILOVER_LEASE_TIMEOUT": "3.0",
    "FAILOVER_DATABASE_TIMEOUT": "0.5",
    "FAILOVER_CROSS_REGION_DELAY": "1.0",
}
"""The product's default timings, written out: tests of what a far node keeps at defaults."""

FAST_TIMING = {
    "FAILOVER_HEARTBEAT_INTERVAL": "0.3",
    "FAILOVER_LEASE_TIMEOUT": "1.5",
    "FAILOVER_DATABASE_TIMEOUT": "0.3",
    "FAILOVER_CROSS_REGION_DELAY": "0.5",
    "FAILOVER_LOG_LEVEL": "INFO",
    "FAILOVER_CHILD_ENV_PASSTHROUGH": json.dumps(PASSTHROUGH),
}


class Cluster(LocalCluster):
    def __init__(self, tmp_path: Path, database_url: str, broker_url: str, **env: str) -> None:
        super().__init__(tmp_path, database_url, broker_url, {**FAST_TIMING, **env})

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
