"""The stores' own failovers: `python -m tests.benchmarks.store_failover [--trials N]`.

Database: three real nodes at default settings on a PostgreSQL primary with a synchronous
standby, through the multi-host URL (`target_session_attrs=read-write`). At a random
moment of the heartbeat cycle the primary is SIGKILLed and the standby promoted at once;
then the old primary is rewound and rejoins as the standby for the next trial.
Broker: three nodes on Redis with one replica behind three sentinels (down-after 500 ms),
a fresh group per trial; the master is SIGKILLed and Sentinel promotes the replica; at the
default lease (3 s) and at `--sentinel-leases` others.

Reported per kind: the promotion (kill until the new primary takes writes, or until the
sentinels name the new master), the time until every node has renewed its lease (kill to
the last node's first renewal), lapses (a node whose renewals around the kill are more
than a lease apart, on the database clock), and changes of owner. Uses
FAILOVER_TEST_DATABASE_URL / FAILOVER_TEST_BROKER_URL when set (for the store that is not
failing over), else embedded servers. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tests.support.cluster import DEFAULT_TIMING, Cluster, wait_until
from tests.support.renewals import first_renewals, last_renewals
from tests.support.replicas import SentinelGroup, postgres_pair, redis_sentinels
from tests.support.servers import Servers, clean_broker, fresh_database, start_servers
from workers.settings import load_settings
from workers.stores.database import upgrade_schema

NAMES = ("a", "b", "c")


def start_three(cluster: Cluster) -> None:
    cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 60, "a to claim")
    cluster.start_live("b", "r1")
    cluster.start_live("c", "r2")


def trial(cluster: Cluster, fail: Callable[[], float], lease: float) -> dict[str, float]:
    """One failover at a random moment of the cycle: `fail` kills the store and returns
    when its replacement took over (monotonic). Timings from the kill, and lapses."""
    time.sleep(random.uniform(1.0, 2.0))
    before = last_renewals(cluster)
    since = max(before.values())
    killed = time.monotonic()
    promoted = fail()
    renewed = first_renewals(cluster, NAMES, since, killed, 60)
    gaps = [(renewed[n][1] - before[n]).total_seconds() for n in NAMES]
    return {
        "promotion": promoted - killed,
        "all_renewed": max(seconds for seconds, _ in renewed.values()),
        "lapses": sum(gap > lease for gap in gaps),
        "widest_gap": max(gaps),
    }


def database_trials(tmp: Path, servers: Servers, trials: int) -> list[dict[str, float]]:
    results = []
    with ExitStack() as stack:
        pair = stack.enter_context(postgres_pair(synchronous=True))
        pair.create_database("failover")
        url = pair.url("failover")
        upgrade_schema(load_settings(database_url=url))
        broker = stack.enter_context(clean_broker(servers.broker_url))
        cluster = Cluster(tmp, url, broker, **DEFAULT_TIMING)
        stack.callback(cluster.close)
        start_three(cluster)
        for number in range(trials):

            def fail() -> float:
                pair.kill_primary()
                return pair.promote_standby()

            row = trial(cluster, fail, float(DEFAULT_TIMING["FAILOVER_LEASE_TIMEOUT"]))
            row["changes"] = len(cluster.history()) - 2
            print(f"  database trial {number + 1}: {row}", flush=True)
            results.append(row)
            pair.rejoin_old_primary()
    return results


def sentinel_trials(
    tmp: Path, servers: Servers, trials: int, lease: float
) -> list[dict[str, float]]:
    results = []
    for number in range(trials):
        with ExitStack() as stack:
            sentinels = stack.enter_context(redis_sentinels())
            url = stack.enter_context(fresh_database(servers))
            cluster = Cluster(
                tmp / f"sentinel-{lease:g}-{number}",
                url,
                sentinels.broker_url(0),
                **{**DEFAULT_TIMING, "FAILOVER_LEASE_TIMEOUT": str(lease)},
                FAILOVER_SENTINEL_MASTER=sentinels.master_name,
            )
            cluster.folder.mkdir()
            stack.callback(cluster.close)
            start_three(cluster)

            def fail(sentinels: SentinelGroup = sentinels) -> float:
                sentinels.kill_master()
                return sentinels.wait_promoted(60)

            row = trial(cluster, fail, lease)
            row["changes"] = len(cluster.history()) - 2
            print(f"  sentinel trial {number + 1}: {row}", flush=True)
            results.append(row)
    return results


def summary(kind: str, rows: list[dict[str, float]]) -> str:
    promotion = [row["promotion"] for row in rows]
    renewed = [row["all_renewed"] for row in rows]
    return (
        f"| {kind} | {len(rows)} | {statistics.median(promotion):.2f} s | "
        f"{max(promotion):.2f} s | {statistics.median(renewed):.2f} s | {max(renewed):.2f} s | "
        f"{max(row['widest_gap'] for row in rows):.2f} s | "
        f"{sum(int(row['lapses']) for row in rows)} | {sum(int(row['changes']) for row in rows)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--only", choices=("database", "sentinel"))
    parser.add_argument("--sentinel-leases", type=float, nargs="*", default=[3.0, 4.0])
    args = parser.parse_args()
    lines = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as name:
        servers = start_servers(stack)
        tmp = Path(name)
        if args.only != "sentinel":
            rows = database_trials(tmp, servers, args.trials)
            lines.append(summary("PostgreSQL standby promoted (synchronous, 3 s lease)", rows))
        for lease in args.sentinel_leases if args.only != "database" else []:
            rows = sentinel_trials(tmp, servers, args.trials, lease)
            lines.append(summary(f"Redis Sentinel promotes the replica ({lease:g} s lease)", rows))
    print()
    print(
        "| failover | trials | promotion p50 | max | every node renewed p50 | max "
        "| widest renewal gap | lapses | owner changes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
