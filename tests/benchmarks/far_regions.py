"""A far node at 0-250 ms round trip: `python -m tests.benchmarks.far_regions [--soak S]`.

Three real nodes at default settings: `a` and `b` near the stores, `c` (region `far`)
reaching PostgreSQL and Redis through delay proxies (half the round trip each way). For
each round trip, `c` is started and its row sampled every 50 ms (seconds from the start to its
registration and to its first renewal through its consumer, and whether its lease lapsed
after that), then `c` owns both services (moved there by `failover move`) for `--soak`
seconds while its lease is sampled every 0.25 s (lapses) and its stored heartbeat cycle
is collected (tick to renewed lease, as the node measures it); then `c` is SIGKILLed at a
random moment `--trials` times, timed until a near node holds `folder_monitor` at a higher
epoch. At 250 ms the far region gets the lease the README advises. Uses
FAILOVER_TEST_DATABASE_URL / FAILOVER_TEST_BROKER_URL when set, else embedded servers.

With `--tls`, two more rows at 150 ms on stores the benchmark starts itself, once plain and
once behind verified TLS (PostgreSQL `ssl = on`, Redis `tls-port`, client certificates;
`tests/support/tls.py`): the same join and soak, then each store is restarted and timed
from the moment it answers again to c's next renewal (TLS adds round trips when a
connection is made), and whether c still owns its services after each. Prints tables;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tests.support.cluster import DEFAULT_TIMING, Cluster, wait_until
from tests.support.delay_proxy import DelayProxy
from tests.support.pki import libpq_tls, make_pki
from tests.support.postgres_server import postgres_server
from tests.support.redis_server import redis_server
from tests.support.servers import (
    Servers,
    broker_target,
    broker_url_via,
    clean_broker,
    database_target,
    database_url_via,
    fresh_database,
    start_servers,
)
from tests.support.tls import tls_postgres

ROUND_TRIPS_MS = (0, 50, 100, 150, 250)
REGION_LEASE = {250: 4.0}
SERVICES = ("folder_monitor", "app_script")


class Sampler:
    """Samples c's row every 0.25 s: lapse events and each distinct stored cycle."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples = self.lapsed_samples = self.lapses = 0
        self.cycles: dict[object, float] = {}
        self._was_fresh = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            row = self.cluster.node_row("c")
            fresh = bool(row.lease_fresh and row.is_active)
            self.samples += 1
            self.lapsed_samples += not fresh
            self.lapses += self._was_fresh and not fresh
            self._was_fresh = fresh
            if row.heartbeat_cycle_ms is not None:
                self.cycles[row.last_heartbeat_at] = row.heartbeat_cycle_ms

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def join_c(cluster: Cluster, far_env: dict[str, str]) -> tuple[float, float, bool]:
    """Start c and sample its row every 50 ms until it has been live for 5 s: seconds from
    the start to its registration and to its first renewal through its consumer, and
    whether its lease lapsed at any moment after that first renewal."""
    started = time.monotonic()
    cluster.start("c", "far", **far_env)
    registered = first_live = None
    lapsed = False
    while time.monotonic() - started < 120:
        row = cluster.node_row("c")
        now = time.monotonic() - started
        live = bool(row and row.is_active and row.lease_fresh and row.stopped_at is None)
        if row is not None and registered is None:
            registered = now
        if live and first_live is None:
            first_live = now
        lapsed = lapsed or (first_live is not None and not live)
        if first_live is not None and now - first_live > 5.0:
            break
        time.sleep(0.05)
    assert registered is not None and first_live is not None, "c never joined"
    return registered, first_live, lapsed


def give_everything_to_c(cluster: Cluster) -> None:
    """Move both services to c, as an operator would, retrying while c is still starting."""
    for service in SERVICES:
        wait_until(
            lambda service=service: (
                cluster.owners()[service][0] == "c"
                or cluster.cli("move", service, "--to", "c", "--timeout", "30").returncode == 0
            ),
            120,
            f"c to take {service}",
            every=1.0,
        )


def one_failover(cluster: Cluster, far_env: dict[str, str]) -> float:
    """SIGKILL c at a random moment; seconds until a near node holds folder_monitor."""
    _, epoch = cluster.owners()["folder_monitor"]
    victim = cluster.running("c")
    assert victim is not None
    time.sleep(random.uniform(0, 2.0))
    started = time.monotonic()
    victim.crash()
    wait_until(
        lambda: cluster.owners()["folder_monitor"][1] > epoch,
        60,
        "a near node to take over",
        every=0.01,
    )
    elapsed = time.monotonic() - started
    victim.popen.wait(timeout=60)
    cluster.lapsed("c")
    cluster.start_live("c", "far", **far_env)
    give_everything_to_c(cluster)
    return elapsed


def soak_far_node(
    cluster: Cluster, far_env: dict[str, str], soak: float
) -> tuple[Sampler, tuple[float, float, bool]]:
    """Near nodes a and b, then c joining far away (`join_c`), given both services and
    sampled for `soak` seconds."""
    cluster.start_live("a", "near")
    cluster.start_live("b", "near")
    joined = join_c(cluster, far_env)
    give_everything_to_c(cluster)
    sampler = Sampler(cluster)
    time.sleep(soak)
    sampler.stop()
    return sampler, joined


def run_case(tmp: Path, servers, rtt_ms: int, soak: float, trials: int) -> dict[str, object]:
    env = dict(DEFAULT_TIMING)
    if rtt_ms in REGION_LEASE:
        env["FAILOVER_REGION_LEASE_TIMEOUT"] = json.dumps({"far": REGION_LEASE[rtt_ms]})
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database(servers))
        broker_url = stack.enter_context(clean_broker(servers.broker_url))
        one_way = rtt_ms / 2000
        db_proxy = DelayProxy(database_target(database_url), one_way_delay=one_way)
        broker_proxy = DelayProxy(broker_target(broker_url), one_way_delay=one_way)
        stack.callback(db_proxy.close)
        stack.callback(broker_proxy.close)
        far_env = {
            "FAILOVER_DATABASE_URL": database_url_via(database_url, db_proxy.port),
            "FAILOVER_BROKER_URL": broker_url_via(broker_url, broker_proxy.port),
        }
        cluster = Cluster(tmp, database_url, broker_url, **env)
        stack.callback(cluster.close)
        sampler, (registered, first_renewal, join_lapsed) = soak_far_node(cluster, far_env, soak)
        still_owner = cluster.owned_by("c")
        failovers = [one_failover(cluster, far_env) for _ in range(trials)]
    cycles = list(sampler.cycles.values())
    return {
        "rtt": rtt_ms,
        "lease": REGION_LEASE.get(rtt_ms, 3.0),
        "cycles": cycles,
        "lapses": sampler.lapses,
        "lapsed_samples": sampler.lapsed_samples,
        "samples": sampler.samples,
        "still_owner": still_owner,
        "failovers": failovers,
        "soak": soak,
        "registered": registered,
        "first_renewal": first_renewal,
        "join_lapsed": join_lapsed,
    }


def run_own_stores_case(tmp: Path, rtt_ms: int, soak: float, tls: bool) -> dict[str, object]:
    """c at `rtt_ms` from stores of the benchmark's own (plain or TLS): its join and a soak
    as in `run_case`, then each store restarted: seconds from the store answering again to
    c's next renewal."""
    with ExitStack() as stack:
        pki = make_pki(tmp / f"pki-{tls}")
        postgres = stack.enter_context(tls_postgres(pki) if tls else postgres_server())
        broker = stack.enter_context(redis_server(tls=pki if tls else None))
        query = libpq_tls(pki) if tls else ""
        servers = Servers(postgres.url("postgres", query=query), broker.url(), embedded=False)
        database_url = stack.enter_context(fresh_database(servers))
        database = database_url.split("/")[-1].split("?")[0]
        one_way = rtt_ms / 2000
        db_proxy = DelayProxy(("127.0.0.1", postgres.port), one_way_delay=one_way)
        broker_proxy = DelayProxy(("127.0.0.1", broker.port), one_way_delay=one_way)
        stack.callback(db_proxy.close)
        stack.callback(broker_proxy.close)
        far_env = {
            "FAILOVER_DATABASE_URL": postgres.url(database, query=query).replace(
                f":{postgres.port}/", f":{db_proxy.port}/"
            ),
            "FAILOVER_BROKER_URL": broker.url().replace(
                f":{broker.port}/", f":{broker_proxy.port}/"
            ),
        }
        cluster = Cluster(tmp, database_url, broker.url(), **DEFAULT_TIMING)
        stack.callback(cluster.close)
        sampler, (_, first_renewal, join_lapsed) = soak_far_node(cluster, far_env, soak)
        database_reconnect = renewal_after(cluster, postgres.restart)
        owner_after_database = cluster.owned_by("c")
        broker_reconnect = renewal_after(cluster, broker.restart)
        time.sleep(2 * float(DEFAULT_TIMING["FAILOVER_LEASE_TIMEOUT"]))
        owner_after_broker = cluster.owned_by("c")
    return {
        "tls": tls,
        "rtt": rtt_ms,
        "cycles": list(sampler.cycles.values()),
        "lapses": sampler.lapses,
        "first_renewal": first_renewal,
        "join_lapsed": join_lapsed,
        "database_reconnect": database_reconnect,
        "broker_reconnect": broker_reconnect,
        "owner_after_database": owner_after_database,
        "owner_after_broker": owner_after_broker,
    }


def renewal_after(cluster: Cluster, restart: Callable[[], None]) -> float:
    """Restart a store; seconds from its answering again to c's next renewal."""
    restart()
    answered = time.monotonic()
    since = wait_until(lambda: cluster.query("SELECT clock_timestamp() AS at")[0].at, 30, "db")
    wait_until(
        lambda: cluster.node_row("c").last_heartbeat_at > since,
        60,
        "c to renew after the restart",
        every=0.02,
    )
    return time.monotonic() - answered


def print_own_stores_table(rows: list[dict[str, object]]) -> None:
    print()
    print(
        "| stores | round trip | heartbeat cycle p50 | p99 | lapses (soak) "
        "| start to first renewal | lapse after joining "
        "| database restart to renewal | c still owner | broker restart to renewal "
        "| c still owner |"
    )
    print("| --- " * 11 + "|")
    for row in rows:
        cycles: list[float] = row["cycles"]  # type: ignore[assignment]
        print(
            f"| {'TLS' if row['tls'] else 'plain'} | {row['rtt']} ms | "
            f"{percentile(cycles, 0.5):.0f} ms | {percentile(cycles, 0.99):.0f} ms | "
            f"{row['lapses']} | {row['first_renewal']:.2f} s | "
            f"{'yes' if row['join_lapsed'] else 'no'} | {row['database_reconnect']:.2f} s | "
            f"{'yes' if row['owner_after_database'] else 'no'} | "
            f"{row['broker_reconnect']:.2f} s | {'yes' if row['owner_after_broker'] else 'no'} |"
        )


def print_table(rows: list[dict[str, object]]) -> None:
    print()
    print(
        "| round trip | lease | heartbeat cycle p50 | p99 | beats | lapses (soak) "
        "| lapses per 10 min | still owner | failover p50 | max | target "
        "| start to registered | start to first renewal | lapse after joining |"
    )
    print("| --- " * 14 + "|")
    for row in rows:
        cycles: list[float] = row["cycles"]  # type: ignore[assignment]
        failovers: list[float] = row["failovers"]  # type: ignore[assignment]
        lease = float(row["lease"])  # type: ignore[arg-type]
        per_10_min = float(row["lapses"]) * 600 / float(row["soak"])  # type: ignore[arg-type]
        target = lease + 1.0 + 1.0 + 0.5
        print(
            f"| {row['rtt']} ms | {lease:g} s | {percentile(cycles, 0.5):.0f} ms | "
            f"{percentile(cycles, 0.99):.0f} ms | {len(cycles)} | {row['lapses']} | "
            f"{per_10_min:.1f} | {'yes' if row['still_owner'] else 'no'} | "
            f"{statistics.median(failovers):.2f} s | {max(failovers):.2f} s | {target:.1f} s | "
            f"{row['registered']:.2f} s | {row['first_renewal']:.2f} s | "
            f"{'yes' if row['join_lapsed'] else 'no'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", type=float, default=120.0, help="seconds per round trip")
    parser.add_argument("--trials", type=int, default=5, help="failovers per round trip")
    parser.add_argument("--rtt", type=int, nargs="*", default=list(ROUND_TRIPS_MS))
    parser.add_argument(
        "--tls", action="store_true", help="also 150 ms on own stores, plain and over TLS"
    )
    args = parser.parse_args()
    rows = []
    own_rows = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for tls in (False, True) if args.tls else ():
            folder = Path(tmp) / f"own-{tls}"
            folder.mkdir()
            own_rows.append(run_own_stores_case(folder, 150, args.soak, tls))
            print(f"  150 ms, {'TLS' if tls else 'plain'}: {own_rows[-1]}", flush=True)
        servers = start_servers(stack)
        for rtt_ms in args.rtt:
            row = run_case(Path(tmp), servers, rtt_ms, args.soak, args.trials)
            print(
                f"  {rtt_ms} ms: {len(row['cycles'])} beats, {row['lapses']} lapses, "  # type: ignore[arg-type]
                f"failovers {[round(t, 2) for t in row['failovers']]}",  # type: ignore[union-attr]
                flush=True,
            )
            rows.append(row)
    print_table(rows)
    if own_rows:
        print_own_stores_table(own_rows)


if __name__ == "__main__":
    main()
