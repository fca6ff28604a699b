"""When nodes renewed their leases around a failover of a store, read from the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workers.testing.local_cluster import LocalCluster


def database_time(cluster: LocalCluster) -> datetime:
    """The database's clock now."""
    return cluster.query("SELECT clock_timestamp() AS at")[0].at  # type: ignore[no-any-return]


def last_renewals(cluster: LocalCluster) -> dict[str, datetime]:
    """Each node's last renewal, on the database clock."""
    rows = cluster.query("SELECT node_name, last_heartbeat_at FROM server_registry")
    return {row.node_name: row.last_heartbeat_at for row in rows}


def first_renewals(
    cluster: LocalCluster, names: Sequence[str], since: Any, started: float, timeout: float
) -> dict[str, tuple[float, datetime]]:
    """For each node, once it renewed after `since` (database time): the seconds from
    `started` (monotonic) and the renewal's database time. Raises if one never does."""
    renewed: dict[str, tuple[float, datetime]] = {}
    deadline = time.monotonic() + timeout
    while len(renewed) < len(names) and time.monotonic() < deadline:
        try:
            rows = cluster.query(
                "SELECT node_name, last_heartbeat_at FROM server_registry "
                "WHERE last_heartbeat_at > :since",
                since=since,
            )
        except Exception:
            time.sleep(0.05)
            continue
        for row in rows:
            renewed.setdefault(row.node_name, (time.monotonic() - started, row.last_heartbeat_at))
        time.sleep(0.05)
    missing = set(names) - set(renewed)
    if missing:
        raise AssertionError(f"not renewed within {timeout} s: {sorted(missing)}")
    return renewed


@contextmanager
def watching_lapses(cluster: LocalCluster) -> Iterator[set[str]]:
    """Sample every node's lease on the database clock while the block runs: the names of
    those ever seen expired (only while the database itself stays up)."""
    lapsed: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            rows = cluster.query(
                "SELECT node_name FROM server_registry WHERE NOT is_active OR "
                "last_heartbeat_at + lease_timeout_s * interval '1 second' < clock_timestamp()"
            )
            lapsed.update(row.node_name for row in rows)
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield lapsed
    finally:
        done.set()
        watcher.join()


@dataclass
class Sample:
    live: bool
    joining: bool


class RowWatch:
    """Samples a node's registry row every 50 ms, in a thread: is it live, is it joining."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            rows = self.cluster.query(
                "SELECT is_active AND stopped_at IS NULL AND last_heartbeat_at + "
                "lease_timeout_s * interval '1 second' > clock_timestamp() AS live, "
                "COALESCE(joining_until > clock_timestamp(), false) AS joining "
                "FROM server_registry WHERE node_name = :name",
                name=self.name,
            )
            if rows:
                self.samples.append(Sample(bool(rows[0].live), bool(rows[0].joining)))

    def live_samples(self) -> int:
        return sum(sample.live for sample in self.samples)

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples


def never_lapsed_once_live(samples: Sequence[Sample]) -> bool:
    """Whether a node, once seen live and joined, was live and joined at every sample after."""
    first = next((i for i, sample in enumerate(samples) if sample.live), None)
    return first is not None and all(s.live and not s.joining for s in samples[first:])
