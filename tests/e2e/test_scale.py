"""Many nodes on one PostgreSQL: connections per node, and three real nodes behind PgBouncer.

Connections are counted from `pg_stat_activity` (every connection names its node, process
and purpose in `application_name`). PgBouncer runs in transaction mode, as a large
deployment would put it in front of the database: no session setting, no prepared
statement and no temporary table may outlive a transaction there.
"""

from __future__ import annotations

import pytest

from tests.support.cluster import Cluster, wait_until
from tests.support.pgbouncer import BINARY, pgbouncer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
SERVICES = ("app_script", "folder_monitor")


def connections_of(cluster: Cluster, node: str) -> int:
    rows = cluster.query(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE :name "
        "AND datname = current_database()",
        name=f"failover:{node}:%",
    )
    return int(rows[0].n)


@pytest.mark.parametrize(("pool", "most"), [("threads", 2), ("solo", 2), ("prefork", 6)])
def test_a_node_holds_few_database_connections(tmp_path, database_url, broker_url, pool, most):
    # Given an owner doing the work of both services and a standby, on the chosen pool
    cluster = Cluster(tmp_path, database_url, broker_url, FAILOVER_POOL=pool)
    (tmp_path / "inbox").mkdir()
    try:
        cluster.start_live("a", "r1", FAILOVER_HOT_FOLDER=str(tmp_path / "inbox"))
        wait_until(lambda: cluster.owned_by("a"), 30, "a to own both services")
        cluster.start_live("b", "r1")
        (tmp_path / "inbox" / "one.txt").write_text("1")
        wait_until(
            lambda: (tmp_path / "inbox" / "processed" / "one.txt").exists(), 30, "a file handled"
        )
        # When both have beaten for a while
        cluster.beats("b", 10)
        # Then each holds at most two connections (prefork: one per pool process, six)
        assert 1 <= connections_of(cluster, "a") <= most
        assert 1 <= connections_of(cluster, "b") <= most
    finally:
        cluster.close()


@pytest.mark.skipif(BINARY is None, reason="pgbouncer is not installed (.ci/run installs it)")
def test_three_nodes_behind_pgbouncer_fail_over_move_and_take_in_files(
    tmp_path, database_url, broker_url
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with pgbouncer(database_url) as bounced:
        # (the test itself reads the outcome directly; nodes and the CLI go through PgBouncer)
        cluster = Cluster(
            tmp_path,
            database_url,
            broker_url,
            FAILOVER_DATABASE_URL=bounced,
            FAILOVER_HOT_FOLDER=str(inbox),
        )
        try:
            # Given three nodes whose every database connection goes through PgBouncer
            cluster.start_live("a", "r1")
            wait_until(lambda: cluster.owned_by("a"), 30, "a to own both services")
            cluster.start_live("b", "r1")
            cluster.start_live("c", "r2")
            # When files arrive, Then the owner takes each in once
            for index in range(20):
                (inbox / f"f{index:02d}.txt").write_text(str(index))
            processed = inbox / "processed"
            wait_until(
                lambda: processed.exists() and len(list(processed.iterdir())) == 20,
                60,
                "every file processed",
            )
            # When a service is moved by hand, Then it moves
            moved = cluster.cli("move", "app_script", "--to", "c")
            assert moved.returncode == 0, moved.stderr
            # When the owner of folder_monitor is killed, Then b (its region) takes it over
            cluster.running("a").crash()
            wait_until(lambda: cluster.owners()["folder_monitor"] == ("b", 2), 30, "b to take over")
            assert cluster.owners()["app_script"][0] == "c"
        finally:
            cluster.close()
