"""Failover time on a real 3-node cluster: `python -m tests.benchmarks.failover [--trials N]`.

Unplanned: SIGKILL the owner of folder_monitor, until a live node holds it at a higher
epoch (read from the database). Planned: SIGTERM the owner, until the same. Each case runs
at the default settings and at a tight setting; the killed node is restarted as a standby
between trials. Uses FAILOVER_TEST_DATABASE_URL / FAILOVER_TEST_BROKER_URL when set,
otherwise embedded servers. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from tests.support.cluster import Cluster, wait_until
from tests.support.servers import clean_broker, fresh_database, start_servers

SETTINGS = {
    "default": {
        "FAILOVER_HEARTBEAT_INTERVAL": "1.0",
        "FAILOVER_LEASE_TIMEOUT": "3.0",
        "FAILOVER_DATABASE_TIMEOUT": "0.5",
        "FAILOVER_CROSS_REGION_DELAY": "1.0",
    },
    "tight": {
        "FAILOVER_HEARTBEAT_INTERVAL": "0.5",
        "FAILOVER_LEASE_TIMEOUT": "1.5",
        "FAILOVER_DATABASE_TIMEOUT": "0.25",
        "FAILOVER_CROSS_REGION_DELAY": "0.5",
    },
}
NODES = (("a", "r1"), ("b", "r1"), ("c", "r2"))
SERVICE = "folder_monitor"


def owner(cluster: Cluster) -> tuple[str | None, int]:
    return cluster.owners()[SERVICE]


def one_trial(cluster: Cluster, planned: bool, interval: float) -> float:
    """Stop the owner at a random moment; return seconds until a live peer holds the service."""
    name, epoch = wait_until(lambda: owner(cluster) if owner(cluster)[0] else None, 60, "an owner")
    victim = next(n for n in reversed(cluster.nodes) if n.name == name and n.alive())
    time.sleep(random.uniform(0, 2 * interval))
    started = time.monotonic()
    if planned:
        victim.popen.send_signal(15)
    else:
        victim.crash()
    wait_until(
        lambda: owner(cluster)[0] not in (None, name) and owner(cluster)[1] > epoch,
        60,
        "a takeover",
        every=0.01,
    )
    elapsed = time.monotonic() - started
    victim.popen.wait(timeout=60)
    region = dict(NODES)[name]
    cluster.start_live(name, region)
    return elapsed


def run_case(tmp: Path, servers, label: str, planned: bool, trials: int) -> list[float]:
    with fresh_database(servers) as database_url, clean_broker(servers.broker_url) as broker_url:
        cluster = Cluster(tmp, database_url, broker_url, **SETTINGS[label])
        try:
            for name, region in NODES:
                cluster.start_live(name, region)
            wait_until(lambda: owner(cluster)[0], 30, "a first owner")
            times = []
            for trial in range(trials):
                interval = float(SETTINGS[label]["FAILOVER_HEARTBEAT_INTERVAL"])
                times.append(one_trial(cluster, planned, interval))
                print(
                    f"  {label:7} {'planned' if planned else 'unplanned':9} trial {trial + 1}/{trials}: {times[-1]:.2f} s",
                    flush=True,
                )
            return times
        finally:
            cluster.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(stack)
        for label in SETTINGS:
            for planned in (False, True):
                times = run_case(Path(tmp), servers, label, planned, args.trials)
                rows.append((label, planned, times))
    print()
    print("| case | settings | trials | min | p50 | p95 | max |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, planned, times in rows:
        s = SETTINGS[label]
        described = (
            f"heartbeat {s['FAILOVER_HEARTBEAT_INTERVAL']} s, lease {s['FAILOVER_LEASE_TIMEOUT']} s"
        )
        kind = "planned (SIGTERM)" if planned else "unplanned (SIGKILL)"
        print(
            f"| {kind} | {described} | {len(times)} | {min(times):.2f} s | "
            f"{statistics.median(times):.2f} s | {percentile(times, 0.95):.2f} s | {max(times):.2f} s |"
        )


if __name__ == "__main__":
    main()
