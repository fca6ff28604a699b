"""Hundreds of nodes on one PostgreSQL: `python -m tests.benchmarks.scale [--nodes N ...]`.

For each N, N simulated nodes beat at 1 Hz on their own staggered phases, each under its
own name and incarnation, with the project's own heartbeat statement (the message a node
sends: `SET LOCAL` bounds and `failover_heartbeat(...)`), driven by pgbench (a C client, so
that the client is not the bottleneck; `--client asyncio` drives them from Python instead). Three real `failover worker` nodes
(probes: a and b in r1, c in r2) run beside them at default settings and judge everyone.
Reported per N: heartbeat latency p50/p99 as the client sees it, PostgreSQL CPU (all its
processes, in cores), false expiries (simulated nodes marked inactive, or services taken
from a live node), the probes' failover time (SIGKILL of the owner until b holds
`folder_monitor`), and the registry's size and dead tuples. Uses FAILOVER_TEST_DATABASE_URL
/ FAILOVER_TEST_BROKER_URL when set, else embedded servers. Prints a table. With `--real 50`,
first 50 real worker processes run behind PgBouncer for `--real-seconds` (lapses, moves).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import psutil
import psycopg
from sqlalchemy.engine import make_url

from beat_schedule.stagger import stagger_phase
from tests.support.cluster import DEFAULT_TIMING, Cluster, wait_until
from tests.support.pgbouncer import pgbouncer
from tests.support.servers import clean_broker, fresh_database, start_servers
from workers.settings import load_settings
from workers.stores.database import bounded
from workers.stores.store import ASYNC_COMMIT, HEARTBEAT_SQL

CONNECTIONS = 20


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def register(url: str, count: int) -> list[tuple[str, str]]:
    """Register `count` simulated nodes in one statement; their (name, incarnation). The
    registry is then analyzed, as autovacuum keeps it in a cluster that has run for a minute
    (the planner reads the owners by index only once it knows the table's size)."""
    nodes = [(f"sim{i:04d}", incarnation_of(f"sim{i:04d}")) for i in range(count)]
    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        connection.execute(
            "INSERT INTO server_registry (node_name, region, incarnation, is_active, "
            "lease_timeout_s, heartbeat_interval_s, draining) "
            "SELECT name, 'sim', inc::uuid, true, 3.0, 1.0, false "
            "FROM unnest(%s::text[], %s::text[]) AS t(name, inc)",
            ([name for name, _ in nodes], [inc for _, inc in nodes]),
        )
        connection.execute("ANALYZE server_registry")
    return nodes


def incarnation_of(name: str) -> str:
    """A simulated node's incarnation: `md5(name)::uuid`, so pgbench can compute it too."""
    return str(uuid.UUID(hashlib.md5(name.encode()).hexdigest()))


PGBENCH_SCRIPT = (
    "\\set i :i + 1\n"
    "\\set n :client_id + :clients * (:i % :per)\n"
    "{bounds}SELECT failover_heartbeat('sim' || lpad(:n::text, 4, '0'), "
    "md5('sim' || lpad(:n::text, 4, '0'))::uuid, true, NULL::real, NULL::real, NULL::real, "
    "false, NULL::text);\n"
)


WARM_UP_SECONDS = 2


def pgbench_beats(url: str, count: int, seconds: float, logs: Path) -> tuple[list[float], float]:
    """Beat `count` simulated nodes with pgbench: each client owns `count / clients` nodes and
    beats them in turn, `count` beats a second in all (each node about once a second), with
    the one message a node sends. The latencies (ms) and PostgreSQL's CPU in cores, both
    after a warm-up: a new connection's first beats pay for PostgreSQL's caches (catalog,
    the function's plan), which a node pays once per connection, not once per beat."""
    clients = max(2, count // 50)
    bounds = (bounded(load_settings(database_timeout=0.5)) + ASYNC_COMMIT).replace("; ", " \\; ")
    script = logs / "heartbeat.sql"
    script.write_text(PGBENCH_SCRIPT.format(bounds=bounds))
    command = [
        shutil.which("pgbench") or "pgbench", "-n", "-M", "simple", "-c", str(clients),
        "-j", "2", "-T", str(int(seconds)), "--rate", str(count), "-D", "i=0",
        "-D", f"clients={clients}", "-D", f"per={count // clients}", "-f", str(script),
        "-l", "--log-prefix", str(logs / "beat"), libpq_url(url),
    ]  # fmt: skip
    with subprocess.Popen(command, cwd=logs, stdout=subprocess.DEVNULL) as bench:
        time.sleep(WARM_UP_SECONDS)
        cpu_before, wall_before = postgres_cpu(), time.monotonic()
        time.sleep(seconds - WARM_UP_SECONDS - 1.0)
        cpu = (postgres_cpu() - cpu_before) / (time.monotonic() - wall_before)
    if bench.returncode:
        raise RuntimeError(f"pgbench failed with exit code {bench.returncode}")
    beats = [line.split() for log in logs.glob("beat.*") for line in log.read_text().splitlines()]
    warm = min(int(beat[4]) for beat in beats) + WARM_UP_SECONDS
    latencies = [int(beat[2]) / 1000 for beat in beats if int(beat[4]) >= warm]
    return latencies, cpu


async def beat_forever(
    pool: asyncio.Queue[psycopg.AsyncConnection[object]],
    name: str,
    incarnation: str,
    stop: float,
    latencies: list[float],
) -> None:
    """One simulated node: beat at its own phase every second until `stop` (monotonic)."""
    settings = load_settings(database_timeout=0.5)
    prefix = bounded(settings)
    phase = stagger_phase(name, 1.0)
    while True:
        now = time.time()
        await asyncio.sleep((phase - now) % 1.0)
        if time.monotonic() >= stop:
            return
        connection = await pool.get()
        try:
            query = prefix + psycopg.ClientCursor(connection).mogrify(  # type: ignore[arg-type]
                HEARTBEAT_SQL,
                {
                    "node": name,
                    "incarnation": uuid.UUID(incarnation),
                    "healthy": True,
                    "db": None,
                    "broker": None,
                    "cycle": None,
                    "everyone": False,
                },
            )
            started = time.perf_counter()
            cursor = await connection.execute(query)
            while cursor.description is None and cursor.nextset():
                pass
            await cursor.fetchone()
            latencies.append((time.perf_counter() - started) * 1000)
        finally:
            pool.put_nowait(connection)


async def simulate(
    url: str, nodes: list[tuple[str, str]], seconds: float
) -> tuple[list[float], float]:
    """Beat every simulated node for `seconds`: the latencies, and PostgreSQL's CPU in cores
    (measured while the connections are open: a backend's CPU leaves with its process)."""
    pool: asyncio.Queue[psycopg.AsyncConnection[object]] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True))
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    cpu_before, wall_before = postgres_cpu(), time.monotonic()
    await asyncio.gather(*(beat_forever(pool, n, i, stop, latencies) for n, i in nodes))
    cpu = (postgres_cpu() - cpu_before) / (time.monotonic() - wall_before)
    while not pool.empty():
        await (pool.get_nowait()).close()
    return latencies, cpu


def postgres_cpu() -> float:
    """CPU seconds used so far by every PostgreSQL server process on this machine."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] in ("postgres", "postmaster") and process.info["cpu_times"]:
            total += process.info["cpu_times"].user + process.info["cpu_times"].system
    return total


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_case(tmp: Path, servers, count: int, seconds: float, client: str) -> dict[str, object]:
    with ExitStack() as stack:
        url = stack.enter_context(fresh_database(servers))
        broker = stack.enter_context(clean_broker(servers.broker_url))
        cluster = Cluster(tmp, url, broker, **DEFAULT_TIMING)
        stack.callback(cluster.close)
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 30, "a to own")
        cluster.start_live("b", "r1")
        cluster.start_live("c", "r2")
        nodes = register(url, count)
        if client == "pgbench":
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp)))
            latencies, cpu = pgbench_beats(url, count, seconds, logs)
        else:
            latencies, cpu = asyncio.run(simulate(url, nodes, seconds))
        false_expiries = cluster.query(
            "SELECT count(*) AS n FROM server_registry WHERE node_name LIKE 'sim%' "
            "AND NOT is_active"
        )[0].n
        false_takeovers = len([h for h in cluster.history() if h.reason == "takeover"])
        stats = cluster.query(
            "SELECT pg_total_relation_size('server_registry') AS size, n_dead_tup AS dead "
            "FROM pg_stat_user_tables WHERE relname = 'server_registry'"
        )[0]
        _, epoch = cluster.owners()["folder_monitor"]
        started = time.monotonic()
        cluster.running("a").crash()
        wait_until(
            lambda: cluster.owners()["folder_monitor"] == ("b", epoch + 1), 60, "b to take over"
        )
        failover = time.monotonic() - started
    return {
        "nodes": count,
        "beats": len(latencies),
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "cpu": cpu,
        "false_expiries": false_expiries,
        "false_takeovers": false_takeovers,
        "failover": failover,
        "size_kb": stats.size // 1024,
        "dead": stats.dead,
    }


def real_nodes(tmp: Path, servers, count: int, seconds: float) -> dict[str, object]:
    """`count` real `failover worker` processes (threads pool) behind one PgBouncer in
    transaction mode for `seconds`: lapses (a lease seen expired while its node runs) and
    changes of owner, sampled every 0.5 s from the database."""
    with ExitStack() as stack:
        url = stack.enter_context(fresh_database(servers))
        broker = stack.enter_context(clean_broker(servers.broker_url))
        bounced = stack.enter_context(pgbouncer(url))
        cluster = Cluster(tmp, url, broker, FAILOVER_DATABASE_URL=bounced, **DEFAULT_TIMING)
        stack.callback(cluster.close)
        names = [f"w{i:02d}" for i in range(count)]
        for name in names:
            cluster.start(name, f"r{int(name[1:]) % 3}")
        wait_until(
            lambda: all(cluster.renewed_since_start(name) for name in names),
            300,
            "every node to beat",
        )
        lapses, samples = 0, 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = cluster.query(
                "SELECT count(*) FILTER (WHERE NOT is_active OR last_heartbeat_at + "
                "lease_timeout_s * interval '1 second' < clock_timestamp()) AS lapsed "
                "FROM server_registry"
            )
            lapses += rows[0].lapsed
            samples += 1
            time.sleep(0.5)
        changes = len(cluster.history()) - len(SERVICES_CLAIMED)
    return {
        "nodes": count,
        "seconds": seconds,
        "samples": samples,
        "lapses": lapses,
        "changes": changes,
    }


SERVICES_CLAIMED = ("folder_monitor", "app_script")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[100, 200, 500, 1000])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--client", choices=("pgbench", "asyncio"), default="pgbench")
    parser.add_argument("--real", type=int, default=0, help="real nodes behind PgBouncer")
    parser.add_argument("--real-seconds", type=float, default=300.0)
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(stack)
        if args.real:
            print(f"  real nodes: {real_nodes(Path(tmp), servers, args.real, args.real_seconds)}")
        for count in args.nodes:
            row = run_case(Path(tmp), servers, count, args.seconds, args.client)
            print(f"  {row}", flush=True)
            rows.append(row)
    print()
    print(
        "| simulated nodes | beats | heartbeat p50 | p99 | PostgreSQL CPU | false expiries "
        "| false takeovers | probe failover | registry size | dead tuples |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['nodes']} | {row['beats']} | {row['p50']:.1f} ms | {row['p99']:.1f} ms | "
            f"{row['cpu']:.2f} cores | {row['false_expiries']} | {row['false_takeovers']} | "
            f"{row['failover']:.2f} s | {row['size_kb']} kB | {row['dead']} |"
        )


if __name__ == "__main__":
    main()
