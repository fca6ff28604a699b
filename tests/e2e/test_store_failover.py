"""The stores fail over too: a real PostgreSQL standby promoted, a real Sentinel failover.

Three real nodes run against a primary with a streaming standby (started by the test, on
loopback, from PostgreSQL's own binaries) through the multi-host URL with
`target_session_attrs=read-write`, or against Redis behind three real sentinels. The
primary or the master is killed and its replica promoted while the nodes work; nothing may
move, nothing may be lost with synchronous replication, and every node must say where it
is connected now.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.cluster import STORE_FAILOVER, Cluster, wait_until
from tests.support.flower import flower, workers_listed
from tests.support.handlers import handled, spans
from tests.support.pgbouncer import BINARY as PGBOUNCER
from tests.support.pgbouncer import running_pgbouncer
from tests.support.proxy import FaultProxy
from tests.support.renewals import database_time, first_renewals, watching_lapses
from tests.support.replicas import (
    PostgresPair,
    SentinelGroup,
    faketime_library,
    postgres_pair,
    redis_sentinels,
)
from workers.settings import load_settings
from workers.stores.database import upgrade_schema

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TIMING = STORE_FAILOVER.env()
NAMES = ["a", "b", "c"]
SERVICES = {"folder_monitor", "app_script"}
FILES = 300
FEW = 12


def config(tmp_path: Path, inbox: Path) -> Path:
    path = tmp_path / "failover.toml"
    path.write_text(
        f"""
[[hot_folders]]
name = "inbox"
path = "{inbox}"
handler = "tests.support.handlers:slow"
settle_seconds = 0.2
max_attempts = 5
retry_backoff = 0.1

[scripts.hello]
argv = ["{sys.executable}", "-c", "print('hello')"]
timeout = 30

[scripts.tick]
argv = ["{sys.executable}", "-c", "print('tick')"]
interval = 0.5
timeout = 30
"""
    )
    return path


def renewals(cluster: Cluster, since, started: float) -> dict[str, float]:
    """Seconds from `started` until each node renewed after `since` (database time)."""
    found = first_renewals(cluster, NAMES, since, started, 60)
    return {name: seconds for name, (seconds, _) in found.items()}


def cluster_on(tmp_path: Path, database_url: str, broker_url: str, **env: str) -> Cluster:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return Cluster(
        tmp_path,
        database_url,
        broker_url,
        FAILOVER_CONFIG=str(config(tmp_path, inbox)),
        TEST_HANDLER_LOG=str(tmp_path / "handled.log"),
        **{**TIMING, **env},
    )


def start_three(cluster: Cluster) -> None:
    cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 30, "a to claim")
    cluster.start_live("b", "r1")
    cluster.start_live("c", "r2")


def write_files(inbox: Path, count: int, seconds: float) -> None:
    for i in range(count):
        (inbox / f"doc-{i:04}.dat").write_text(f"document {i}")
        time.sleep(seconds / count)


@pytest.fixture
def pair_database(request) -> Iterator[tuple[PostgresPair, str]]:
    """A primary and a standby (synchronous unless the test is marked `asynchronous`), with
    the failover schema in a database of their own; the multi-host URL."""
    synchronous = request.node.get_closest_marker("asynchronous") is None
    with postgres_pair(synchronous=synchronous) as pair:
        pair.create_database("failover")
        url = pair.url("failover")
        upgrade_schema(load_settings(database_url=url))
        yield pair, url


def assert_nothing_moved(cluster: Cluster) -> None:
    assert cluster.owners() == {service: ("a", 1) for service in SERVICES}
    assert [row.reason for row in cluster.history()] == ["startup", "startup"]
    assert all(cluster.node_row(name).is_active for name in NAMES)


def answered_since(listed: dict, before: dict) -> bool:
    """Whether every worker Flower lists answered afresh (a longer uptime than `before`)."""
    uptime = {name: (info.get("stats") or {}).get("uptime", -1) for name, info in listed.items()}
    earlier = {name: (info.get("stats") or {}).get("uptime", -1) for name, info in before.items()}
    return bool(listed) and all(uptime[name] > earlier.get(name, -1) for name in uptime)


def address(host_port: tuple[str, int]) -> str:
    return f"{host_port[0]}:{host_port[1]}"


def all_processed(inbox: Path, count: int) -> bool:
    processed = inbox / "processed"
    return processed.is_dir() and len(list(processed.iterdir())) == count


def wait_processed(cluster: Cluster, inbox: Path, count: int) -> None:
    """Wait until `count` files are in processed/; say where the others are if they never are."""
    try:
        wait_until(lambda: all_processed(inbox, count), 120, "every file to be processed")
    except AssertionError:
        states = cluster.query("SELECT state, count(*) AS n FROM folder_file GROUP BY state")
        left = sorted(
            p.name for p in inbox.rglob("*") if p.is_file() and p.parent != inbox / "processed"
        )
        raise AssertionError(
            f"not all processed: ledger {[(r.state, r.n) for r in states]}; elsewhere {left[:20]}"
        ) from None


def test_primary_killed_and_standby_promoted_while_files_arrive_loses_and_moves_nothing(
    tmp_path, pair_database, broker_url
):
    pair, url = pair_database
    inbox = tmp_path / "inbox"
    cluster = cluster_on(tmp_path, url, broker_url)
    try:
        # Given three nodes on a primary with a synchronous standby, a owning both services
        start_three(cluster)
        primary = f"127.0.0.1:{pair.primary.port}"
        wait_until(
            lambda: all(cluster.node_row(n).database_server == primary for n in NAMES),
            30,
            "every node to report the primary",
        )
        # When files arrive and, meanwhile, the primary dies and the standby is promoted
        writer = threading.Thread(target=write_files, args=(inbox, FILES, 6.0))
        writer.start()
        time.sleep(2.0)
        before = database_time(cluster)
        runs = {row.id for row in cluster.query("SELECT id FROM script_run")}
        assert runs
        killed = pair.kill_primary()
        time.sleep(0.5)
        writable = pair.promote_standby()
        renewed = renewals(cluster, before, killed)
        writer.join()
        # Then every node renewed on the new primary, and says so, with when it changed
        for name in NAMES:
            row = cluster.node_row(name)
            assert row.database_server == f"127.0.0.1:{pair.primary.port}"
            assert row.database_changed_at is not None
        # And nothing moved, nothing was lost, every file was handled exactly once
        assert_nothing_moved(cluster)
        wait_processed(cluster, inbox, FILES)
        assert handled(tmp_path / "handled.log") == {f"doc-{i:04}.dat": 1 for i in range(FILES)}
        states = cluster.query("SELECT state, count(*) AS n FROM folder_file GROUP BY state")
        assert {row.state: row.n for row in states} == {"processed": FILES}
        # And every script run recorded before the kill is still there, and runs go on
        after = {row.id for row in cluster.query("SELECT id FROM script_run")}
        assert runs < after
        print(
            f"promotion {writable - killed:.2f} s after the kill; first renewal per node "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sorted(renewed.items()))
        )
    finally:
        cluster.close()


def test_planned_switchover_then_the_old_primary_rejoins_as_a_standby_nobody_writes_to(
    tmp_path, pair_database, broker_url
):
    pair, url = pair_database
    cluster = cluster_on(tmp_path, url, broker_url)
    try:
        # Given three nodes on db1, a owning both services
        start_three(cluster)
        old = pair.primary
        # When the roles are switched over by plan, and the old primary rewound as a standby
        before = database_time(cluster)
        started = time.monotonic()
        pair.switchover()
        renewals(cluster, before, started)
        # Then nothing moved, and every node writes to the new primary only: the old one
        # replays their renewals and holds no connection of theirs
        assert pair.is_in_recovery(old) and pair.primary is not old
        assert_nothing_moved(cluster)
        beat = cluster.node_row("b").last_heartbeat_at
        wait_until(
            lambda: (
                pair.query(
                    old,
                    "SELECT max(last_heartbeat_at) FROM server_registry",
                    database="failover",
                )[0][0]
                > beat
            ),
            30,
            "the old primary to replay renewals from the new one",
        )
        clients = pair.query(
            old,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'failover:%'",
        )[0][0]
        assert clients == 0
        # And the cluster still fails over: the owner killed, b takes over at epoch 2
        cluster.running("a").crash()
        wait_until(lambda: cluster.owners()["folder_monitor"] == ("b", 2), 30, "b to take over")
    finally:
        cluster.close()


def test_a_primary_that_goes_silent_is_left_behind_by_its_connect_and_answer_deadlines(
    tmp_path, pair_database, broker_url
):
    pair, _ = pair_database
    # Given nodes whose first host is a proxy in front of the primary (a load balancer
    # address, say), the standby second
    proxy = FaultProxy(("127.0.0.1", pair.primary.port))
    url = (
        f"postgresql+psycopg://postgres@/failover?host=127.0.0.1:{proxy.port}"
        f"&host=127.0.0.1:{pair.standby.port}&target_session_attrs=read-write&connect_timeout=2"
    )
    cluster = cluster_on(tmp_path, url, broker_url)
    try:
        start_three(cluster)
        # When the primary vanishes without a word (the proxy accepts, acknowledges and never
        # answers) and the standby is promoted
        before = database_time(cluster)
        proxy.silence()
        started = time.monotonic()
        pair.promote_standby()
        # Then every node leaves its hung connection (the answer deadline), skips the silent
        # host (the connect timeout) and renews on the new primary; nothing moved
        renewed = renewals(cluster, before, started)
        assert_nothing_moved(cluster)
        for name in NAMES:
            assert cluster.node_row(name).database_server == f"127.0.0.1:{pair.primary.port}"
        print("first renewal per node after the silence: " + str(renewed))
    finally:
        cluster.close()
        proxy.close()


@pytest.mark.asynchronous
def test_asynchronous_standby_missing_a_move_is_the_truth_and_the_lost_claims_are_restored(
    tmp_path, pair_database, broker_url
):
    pair, url = pair_database
    inbox = tmp_path / "inbox"
    cluster = cluster_on(
        tmp_path,
        url,
        broker_url,
        TEST_HANDLER_SECONDS="2",
        TEST_SPAN_LOG=str(tmp_path / "spans.log"),
    )
    # A long handler that holds a lock while it, or the child it starts, lives: a run that
    # starts while b's is still alive logs `overlap`
    path = tmp_path / "failover.toml"
    path.write_text(path.read_text().replace("handlers:slow", "handlers:held_span"))
    try:
        # Given three nodes, a owning both services, and a standby that has stopped
        # receiving WAL (asynchronous replication, behind)
        start_three(cluster)
        pair.query(pair.standby, "ALTER SYSTEM SET primary_conninfo = ''")
        pair.query(pair.standby, "SELECT pg_reload_conf()")
        wait_until(
            lambda: not pair.query(pair.standby, "SELECT 1 FROM pg_stat_wal_receiver"),
            30,
            "the standby to stop receiving",
        )
        # When the folder monitor is moved to b, b claims files and starts handling them,
        # and then the primary dies and the standby that saw none of it is promoted
        moved = cluster.cli("move", "folder_monitor", "--to", "b")
        assert moved.returncode == 0, moved.stderr
        write_files(inbox, FEW, 0.2)
        wait_until(lambda: spans(tmp_path / "spans.log")["start"], 30, "b to start a handler")
        pair.kill_primary()
        pair.promote_standby()
        # Then the database is the truth: a owns folder_monitor at epoch 1 again, b says
        # once that the database went back, and b records nothing more for the service
        wait_until(
            lambda: cluster.owners()["folder_monitor"] == ("a", 1), 60, "the promoted database"
        )
        wait_until(lambda: "database is behind" in cluster.running("b").log(), 30, "b to notice")
        # And every file ends processed: those whose claims were lost are put back into the
        # hot folder by a, counted, and handled again
        wait_processed(cluster, inbox, FEW)
        counts = handled(tmp_path / "handled.log")
        assert set(counts) == {f"doc-{i:04}.dat" for i in range(FEW)}
        # And b's handlers, fenced at the epoch the database forgot, were stopped before a
        # started any of their files again
        assert spans(tmp_path / "spans.log")["overlap"] == []
        restored = cluster.node_row("a").restored_files
        assert restored > 0
        assert cluster.running("b").log().count("database is behind") == 1
        assert {row.node for row in cluster.query("SELECT DISTINCT node FROM folder_file")} == {"a"}
        print(f"files handled twice: {sum(n > 1 for n in counts.values())}, restored {restored}")
    finally:
        cluster.close()


def in_processing(inbox: Path) -> int:
    processing = inbox / ".processing"
    return len(list(processing.iterdir())) if processing.is_dir() else 0


def nodes_follow_a_sentinel_failover(
    stack: ExitStack, tmp_path: Path, database_url: str, sentinels: SentinelGroup
) -> Cluster:
    """Three nodes behind `sentinels` (plain or TLS), watched in Flower, through a Sentinel
    failover: no lease lapses, every node renews through the new master, nothing moves, and
    Flower, `failover move` and `run-script --wait` work afterwards. The running cluster
    (closed by `stack`), for the caller's own checks."""
    cluster = cluster_on(
        tmp_path,
        database_url,
        sentinels.broker_url(0),
        FAILOVER_SENTINEL_MASTER=sentinels.master_name,
        FAILOVER_LEASE_TIMEOUT="5.0",
    )
    stack.callback(cluster.close)
    # Given three nodes whose broker is Redis behind three sentinels, watched in Flower
    start_three(cluster)
    flower_base = stack.enter_context(flower(cluster))
    seen = wait_until(
        lambda: workers_listed(flower_base, set(NAMES)), 60, "Flower to list the workers"
    )
    master = address(sentinels.master_address())
    wait_until(
        lambda: all(cluster.node_row(n).broker_server == master for n in NAMES),
        30,
        "every node to report the master",
    )
    # When the master is killed and Sentinel promotes the replica
    before = database_time(cluster)
    with watching_lapses(cluster) as lapses:
        killed = sentinels.kill_master()
        promoted = sentinels.wait_promoted(60)
        renewed = renewals(cluster, before, killed)
    # Then no lease lapsed (the promotion took less than a lease)
    assert promoted - killed < 5.0
    assert lapses == set()
    # And every node renewed through the new master, says so, and nothing moved
    new_master = address(sentinels.master_address())
    assert new_master != master
    try:
        wait_until(
            lambda: {broker_server(cluster, n) for n in NAMES} == {new_master},
            30,
            f"every node to report the new master {new_master}",
        )
    except AssertionError as error:
        reported = {n: broker_server(cluster, n) for n in NAMES}
        raise AssertionError(f"{error}; they report {reported}") from None
    assert all(cluster.node_row(n).broker_changed_at is not None for n in NAMES)
    assert_nothing_moved(cluster)
    # And Flower, started before the failover, lists every worker again
    wait_until(
        lambda: answered_since(workers_listed(flower_base, set(NAMES)), seen),
        60,
        "Flower to hear from every worker again",
    )
    # And commands that wait on results work through the new master
    moved = cluster.cli("move", "folder_monitor", "--to", "b", timeout=90)
    assert moved.returncode == 0, moved.stderr
    ran = cluster.cli("run-script", "hello", "--wait", timeout=90)
    assert ran.returncode == 0, ran.stderr
    print(
        f"Sentinel promoted in {promoted - killed:.2f} s; first renewal per node "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sorted(renewed.items()))
    )
    return cluster


def test_sentinel_promotes_the_replica_and_every_node_follows_with_no_lapse(tmp_path, database_url):
    with ExitStack() as stack:
        sentinels = stack.enter_context(redis_sentinels())
        nodes_follow_a_sentinel_failover(stack, tmp_path, database_url, sentinels)


@pytest.mark.skipif(faketime_library() is None, reason="libfaketime is not installed")
@pytest.mark.parametrize("offset", [30.0, -30.0], ids=["ahead", "behind"])
def test_a_new_primary_whose_clock_is_30_s_off_takes_nothing_over_and_still_fails_over(
    tmp_path, pair_database, broker_url, offset
):
    pair, url = pair_database
    cluster = cluster_on(tmp_path, url, broker_url)
    try:
        # Given three nodes, a owning both services, and a standby whose clock is 30 s off
        start_three(cluster)
        pair.skew_clock(pair.standby, offset)
        [(skew,)] = pair.query(
            pair.standby,
            "SELECT extract(epoch FROM now()) - %s",
            (time.time(),),
        )
        assert abs(float(skew) - offset) < 5
        # When the primary dies and that standby is promoted: every lease in the database
        # was written on the old clock and is now read on the new one
        killed = pair.kill_primary()
        pair.promote_standby()
        since = database_time(cluster)
        renewals(cluster, since, killed)
        # Then nobody takes anything over, for several leases
        deadline = time.monotonic() + 3 * STORE_FAILOVER.lease_timeout
        while time.monotonic() < deadline:
            assert_nothing_moved(cluster)
            time.sleep(0.3)
        # And the cluster still fails over on the new clock: a killed, b takes over
        cluster.running("a").crash()
        wait_until(lambda: cluster.owners()["folder_monitor"] == ("b", 2), 30, "b to take over")
    finally:
        cluster.close()


@pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed")
def test_a_promotion_reaches_nodes_through_a_pgbouncer_repointed_at_the_new_primary(
    tmp_path, pair_database, broker_url
):
    pair, _ = pair_database
    with ExitStack() as stack:
        # Given three nodes behind one PgBouncer (transaction mode) in front of the primary
        bouncer = stack.enter_context(running_pgbouncer(pair.member_url(pair.primary, "failover")))
        cluster = cluster_on(tmp_path, bouncer.url, broker_url)
        stack.callback(cluster.close)
        start_three(cluster)
        # When the primary dies, the standby is promoted and PgBouncer is repointed at it
        # (what a cluster manager's promotion callback does)
        killed = pair.kill_primary()
        pair.promote_standby()
        bouncer.repoint(("127.0.0.1", pair.primary.port))
        since = database_time(cluster)
        # Then every node renews on the new primary through the same PgBouncer; nothing moved
        renewed = renewals(cluster, since, killed)
        assert_nothing_moved(cluster)
        for name in NAMES:
            assert cluster.node_row(name).database_server == f"127.0.0.1:{pair.primary.port}"
        print("first renewal per node through a repointed PgBouncer: " + str(renewed))


def broker_server(cluster: Cluster, name: str) -> str | None:
    """The broker server a node last reported."""
    return cluster.node_row(name).broker_server  # type: ignore[no-any-return]
