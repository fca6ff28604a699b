"""Issue: a heartbeat's cost must not grow with the cluster, and upkeep must keep it so.

Real PostgreSQL: the reduced snapshot a heartbeat reads, the judging of a dead node by the
first candidates only, a frozen transaction ended at the lease (directly and through a real
PgBouncer in transaction mode), and the pruning of long-stopped nodes.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from tests.support.pgbouncer import BINARY, pgbouncer
from tests.support.registry import add_node, give
from workers.errors import DatabaseUnavailable
from workers.settings.process import Identity
from workers.stores import store
from workers.stores.database import transaction

SERVICES = ("folder_monitor", "app_script")


def test_a_standby_reads_itself_and_the_owners_not_the_whole_registry(settings):
    # Given twenty live nodes, a owning both services
    add_node(settings, "a")
    for service in SERVICES:
        give(settings, service, "a")
    for index in range(20):
        add_node(settings, f"n{index:02d}")
    # When n05 beats
    snapshot = beat_as(settings, "n05")
    # Then it read itself and the owner only
    assert snapshot is not None and not snapshot.complete
    assert sorted(node.name for node in snapshot.nodes) == ["a", "n05"]


def test_every_node_is_read_when_a_service_needs_a_new_owner(settings):
    # Given the owner's lease has run out
    add_node(settings, "a", beat_age=60)
    for service in SERVICES:
        give(settings, service, "a")
    for index in range(5):
        add_node(settings, f"n{index}")
    # When a standby beats, Then it reads every node: it may have to choose among them
    snapshot = beat_as(settings, "n1")
    assert snapshot is not None and snapshot.complete and len(snapshot.nodes) == 6


def test_a_peer_that_may_have_expired_is_read_by_the_owners_who_judge_it(settings):
    # Given a owning every service, a peer silent for a minute and a live standby
    add_node(settings, "a")
    for service in SERVICES:
        give(settings, service, "a")
    add_node(settings, "gone", beat_age=60)
    add_node(settings, "alive")
    # Then the owner's beat reads the silent peer, to judge it (and mark it inactive)
    owner = beat_as(settings, "a")
    assert owner is not None
    assert sorted(node.name for node in owner.nodes) == ["a", "gone"]
    # And a standby's beat reads only itself and the owner: its cost does not grow with
    # the number of nodes, dead or alive
    standby = beat_as(settings, "alive")
    assert standby is not None
    assert sorted(node.name for node in standby.nodes) == ["a", "alive"]


def beat_as(settings, name: str):
    """One heartbeat of the registered node `name`: the snapshot it decides on."""
    with transaction(settings) as connection:
        incarnation = connection.execute(
            text("SELECT incarnation FROM server_registry WHERE node_name = :n"), {"n": name}
        ).scalar_one()
    return store.heartbeat(settings, Identity(name, str(incarnation)), True, store.Latency())


def frozen_transaction_ends_at_the_lease(settings) -> None:
    """A transaction that holds a service row's lock and then freezes loses it at the lease."""
    add_node(settings, "a")
    give(settings, "folder_monitor", "a")
    holding = threading.Event()
    outcome: list[BaseException | None] = []

    def freeze() -> None:
        try:
            with transaction(settings) as connection:
                connection.execute(
                    text(
                        "SELECT * FROM service_status WHERE service_type = 'folder_monitor' FOR UPDATE"
                    )
                )
                holding.set()
                time.sleep(settings.lease_timeout + 1.5)
                connection.execute(text("SELECT 1"))
            outcome.append(None)
        except DatabaseUnavailable as error:
            outcome.append(error)

    thread = threading.Thread(target=freeze)
    thread.start()
    assert holding.wait(10)
    # When another transaction wants the same row (as a takeover does), waiting in short steps
    deadline = time.monotonic() + settings.lease_timeout + 5
    taken = False
    while not taken and time.monotonic() < deadline:
        try:
            with transaction(settings) as connection:
                connection.execute(
                    text(
                        "SELECT * FROM service_status WHERE service_type = 'folder_monitor' FOR UPDATE NOWAIT"
                    )
                )
                taken = True
        except Exception:
            time.sleep(0.1)
    thread.join(15)
    # Then it got the row once the frozen transaction had idled for a lease, and the frozen
    # one learned that its transaction was ended
    assert taken
    assert outcome and outcome[0] is not None


def test_a_frozen_transaction_ends_at_the_lease(settings):
    frozen_transaction_ends_at_the_lease(settings)


@pytest.mark.skipif(BINARY is None, reason="pgbouncer is not installed (.ci/run installs it)")
def test_a_frozen_transaction_ends_at_the_lease_behind_pgbouncer(settings, database_url):
    with pgbouncer(database_url) as url:
        frozen_transaction_ends_at_the_lease(settings.model_copy(update={"database_url": url}))


def test_nodes_stopped_long_ago_that_own_nothing_are_pruned_at_a_node_start(settings):
    # Given two nodes stopped 8 days ago, one still named as an owner, and a live one
    for name in ("old", "old_owner", "live"):
        add_node(settings, name)
    give(settings, "app_script", "old_owner")
    with transaction(settings) as connection:
        connection.execute(
            text(
                "UPDATE server_registry SET stopped_at = clock_timestamp() - interval '8 days', "
                "is_active = false WHERE node_name IN ('old', 'old_owner')"
            )
        )
    # When a node registers
    add_node(settings, "new")
    # Then the stopped node that owns nothing is gone; the owner and the live nodes remain
    with transaction(settings) as connection:
        names = set(connection.execute(text("SELECT node_name FROM server_registry")).scalars())
    assert names == {"old_owner", "live", "new"}
