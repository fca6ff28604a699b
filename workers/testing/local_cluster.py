"""Real `failover worker` processes on this machine, for the demo, the tests and the benchmarks.

Each node runs in a process group of its own, so a SIGKILL of the group is a node crash
(the worker, its pool children and its beat thread all die), SIGSTOP of the group freezes
the node, and SIGTERM to the main process is an operator's graceful stop. `close()` kills
whatever is still running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from workers.testing.waiting import wait_until

RESET_VARIABLES = ("FAILOVER_NODE_NAME", "FAILOVER_INCARNATION", "FAILOVER_CONFIG")


class LocalNode:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def crash(self) -> None:
        """SIGKILL the whole node: nothing gets to clean up, as in a power loss."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM to the worker's main process: Celery's warm shutdown."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None


class LocalCluster:
    """Starts nodes against one database and broker, and reads the outcome from the database."""

    def __init__(
        self, folder: Path, database_url: str, broker_url: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.folder = folder
        inherited = {k: v for k, v in os.environ.items() if k not in RESET_VARIABLES}
        self.env = {
            **inherited,
            "FAILOVER_DATABASE_URL": database_url,
            "FAILOVER_BROKER_URL": broker_url,
            **(env or {}),
        }
        self.nodes: list[LocalNode] = []
        self.engine = create_engine(database_url, pool_pre_ping=True)

    def start(self, name: str, region: str, *extra: str, **env: str) -> LocalNode:
        """Start `failover worker --node NAME --region REGION` in a process group of its own."""
        command = [sys.executable, "-m", "workers", "worker", "--node", name, "--region", region]
        return self.spawn([*command, *extra], name, **env)

    def spawn(self, command: list[str], name: str, **env: str) -> LocalNode:
        log = self.folder / f"{name}-{len(self.nodes)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **env},
                start_new_session=True,
            )
        node = LocalNode(name, popen, log)
        self.nodes.append(node)
        return node

    def start_live(self, name: str, region: str, *extra: str, **env: str) -> LocalNode:
        """Start a node and wait until it has renewed its lease at least once."""
        node = self.start(name, region, *extra, **env)
        wait_until(lambda: self.renewed_since_start(name), 60, f"{name} to beat")
        return node

    def running(self, name: str) -> LocalNode | None:
        return next((n for n in reversed(self.nodes) if n.name == name and n.alive()), None)

    def close(self) -> None:
        for node in self.nodes:
            node.resume()
            node.signal_group(signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.popen.wait(timeout=10)
        self.engine.dispose()

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    def owners(self) -> dict[str, tuple[str | None, int]]:
        rows = self.query(
            "SELECT s.service_type, r.node_name, s.epoch FROM service_status s "
            "LEFT JOIN server_registry r ON r.id = s.service_registry_id"
        )
        return {row.service_type: (row.node_name, row.epoch) for row in rows}

    def owned_by(self, node: str) -> bool:
        return all(owner == node for owner, _ in self.owners().values())

    def history(self) -> list[Any]:
        return self.query("SELECT * FROM ownership_history ORDER BY id")

    def node_row(self, name: str) -> Any:
        rows = self.query(
            "SELECT *, clock_timestamp() AS db_now, "
            "failover_lease_holds(server_registry) "
            "AS lease_fresh FROM server_registry WHERE node_name = :name",
            name=name,
        )
        return rows[0] if rows else None

    def renewed_since_start(self, name: str) -> bool:
        row = self.node_row(name)
        return bool(
            row and row.is_active and row.lease_fresh and row.last_heartbeat_at > row.started_at
        )

    def ticks(self, service: str, epoch: int) -> int:
        rows = self.query(
            "SELECT tick_count FROM service_tick WHERE service_type = :s AND epoch = :e",
            s=service,
            e=epoch,
        )
        return int(rows[0].tick_count) if rows else 0
