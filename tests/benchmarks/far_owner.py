"""A far owner keeps pace: `python -m tests.benchmarks.far_owner [--seconds S] [--rtt MS ...]`.

Three real nodes at default settings: `a` and `b` near the stores, `c` (region `far`)
reaching PostgreSQL and Redis through delay proxies. For each round trip, `c` is given both
services (`failover move`) and, for `--seconds` (30), a file is dropped in the hot folder
every second while a script runs at a 1 s interval. Counted on `c`: service-work cycles (the
ticks of its two services, halved), runs of the script, files handled by the end plus 5 s,
the latency of each file from the moment it settled (first seen + `settle_seconds`: from
then on a scan claims it) to its outcome, and `c`'s heartbeat cycle while it works (its stored cycles, p50 and p99). Uses
FAILOVER_TEST_DATABASE_URL / FAILOVER_TEST_BROKER_URL when set, else embedded servers.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from tests.benchmarks.far_regions import Sampler, give_everything_to_c, percentile
from tests.support.cluster import DEFAULT_TIMING, Cluster
from tests.support.delay_proxy import DelayProxy
from tests.support.servers import (
    broker_target,
    broker_url_via,
    clean_broker,
    database_target,
    database_url_via,
    fresh_database,
    start_servers,
)

SETTLE = 0.5


def config(tmp: Path) -> Path:
    inbox = tmp / "inbox"
    inbox.mkdir()
    path = tmp / "failover.toml"
    path.write_text(
        f"""
[[hot_folders]]
name = "inbox"
path = "{inbox}"
handler = "tests.support.handlers:record"
settle_seconds = {SETTLE}

[scripts.tick]
argv = ["{sys.executable}", "-c", "pass"]
interval = 1
"""
    )
    return path


def run_case(tmp: Path, servers: object, rtt_ms: int, seconds: float) -> dict[str, object]:
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database(servers))  # type: ignore[arg-type]
        broker_url = stack.enter_context(clean_broker(servers.broker_url))  # type: ignore[attr-defined]
        one_way = rtt_ms / 2000
        db_proxy = DelayProxy(database_target(database_url), one_way_delay=one_way)
        broker_proxy = DelayProxy(broker_target(broker_url), one_way_delay=one_way)
        stack.callback(db_proxy.close)
        stack.callback(broker_proxy.close)
        env = {
            **DEFAULT_TIMING,
            "FAILOVER_CONFIG": str(config(tmp)),
            "TEST_HANDLER_LOG": str(tmp / "handled.log"),
        }
        cluster = Cluster(tmp, database_url, broker_url, **env)
        stack.callback(cluster.close)
        cluster.start_live("a", "near")
        cluster.start_live("b", "near")
        cluster.start_live(
            "c",
            "far",
            FAILOVER_DATABASE_URL=database_url_via(database_url, db_proxy.port),
            FAILOVER_BROKER_URL=broker_url_via(broker_url, broker_proxy.port),
        )
        give_everything_to_c(cluster)
        time.sleep(3.0)
        return measure(cluster, tmp / "inbox", seconds) | {"rtt": rtt_ms}


def measure(cluster: Cluster, inbox: Path, seconds: float) -> dict[str, object]:
    """Drop a file a second for `seconds` while counting what c does."""
    epochs = {service: cluster.owners()[service][1] for service in ("folder_monitor", "app_script")}
    ticks_before = sum(cluster.ticks(service, epoch) for service, epoch in epochs.items())
    start = cluster.query("SELECT clock_timestamp() AS at")[0].at
    sampler = Sampler(cluster)
    written: dict[str, float] = {}
    began = time.time()
    for i in range(int(seconds)):
        name = f"doc-{i:03}.dat"
        (inbox / name).write_text(str(i))
        written[name] = time.time()
        time.sleep(max(0.0, began + i + 1 - time.time()))
    ticks = sum(cluster.ticks(service, epoch) for service, epoch in epochs.items()) - ticks_before
    runs = cluster.query(
        "SELECT count(*) AS n FROM script_run WHERE node = 'c' AND started_at >= :t", t=start
    )[0].n
    time.sleep(5.0)
    sampler.stop()
    if os.environ.get("FAR_OWNER_DEBUG"):
        for row in cluster.query(
            "SELECT id, trigger, status, extract(epoch FROM due_at) AS due, "
            "extract(epoch FROM started_at) AS s, extract(epoch FROM finished_at) AS f "
            "FROM script_run ORDER BY id"
        ):
            print(row)
    finished = cluster.query(
        "SELECT rel_path, extract(epoch FROM finished_at - first_seen_at) AS took "
        "FROM folder_file WHERE state = 'processed'"
    )
    latencies = [float(row.took) - SETTLE for row in finished if row.rel_path in written]
    return {
        "cycles": ticks / 2,
        "runs": runs,
        "files": len(latencies),
        "dropped": len(written),
        "latencies": latencies,
        "heartbeat": list(sampler.cycles.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rtt", type=int, nargs="*", default=[0, 50, 100, 150, 250])
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack:
        servers = start_servers(stack)
        for rtt in args.rtt:
            with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
                row = run_case(Path(tmp), servers, rtt, args.seconds)
            print(f"  {rtt} ms: {row}", flush=True)
            rows.append(row)
    print()
    print(
        f"| round trip | service-work cycles in {args.seconds:g} s | script runs | files handled "
        "| file latency p50 | p99 | heartbeat cycle p50 | p99 |"
    )
    print("| --- " * 8 + "|")
    for row in rows:
        lat: list[float] = row["latencies"]  # type: ignore[assignment]
        beat: list[float] = row["heartbeat"]  # type: ignore[assignment]
        print(
            f"| {row['rtt']} ms | {row['cycles']:g} | {row['runs']} | "
            f"{row['files']} / {row['dropped']} | {percentile(lat, 0.5):.2f} s | "
            f"{percentile(lat, 0.99):.2f} s | {percentile(beat, 0.5):.0f} ms | "
            f"{percentile(beat, 0.99):.0f} ms |"
        )


if __name__ == "__main__":
    main()
