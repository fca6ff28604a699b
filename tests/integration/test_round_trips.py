"""Invariant 11: a heartbeat costs a small, fixed number of database round trips.

The node's database traffic goes through a counting proxy (`tests/support/delay_proxy.py`)
that sees every exchange on the wire; the real heartbeat code runs against the real
PostgreSQL behind it. A round trip is counted each time the server answers after the
client spoke, so a `BEGIN` or a pool ping sent on its own would show.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from tests.support.delay_proxy import DelayProxy
from tests.support.proxy import FaultProxy
from tests.support.registry import add_node, give
from tests.support.servers import database_target, database_url_via
from workers.decision.decide import Acquire, Dispatch, Handover
from workers.errors import DatabaseUnavailable
from workers.runtime.heartbeat import Beat, run_cycle
from workers.settings import Settings
from workers.stores.database import transaction

SERVICES = ("folder_monitor", "app_script")


class Recorded:
    """The heartbeat's transport, keeping what it would have published."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def enqueue_takeover(self, action: Acquire) -> None:
        self.sent.append(action)

    def dispatch_services(self, actions: list[Dispatch]) -> None:
        self.sent.append(tuple(actions))

    def request_handover(self, action: Handover) -> None:
        self.sent.append(action)


def round_trips_per_beat(settings: Settings, proxy: DelayProxy, me, beats: int = 5) -> list[int]:
    transport = Recorded()
    run_cycle(settings, me, transport, Beat())  # connects, stores the first verdict
    run_cycle(settings, me, transport, Beat())
    counts = []
    for _ in range(beats):
        proxy.reset_counts()
        run_cycle(settings, me, transport, Beat())
        counts.append(proxy.round_trips)
    return counts


def test_a_standby_heartbeat_is_one_database_round_trip(counted):
    settings, proxy = counted
    add_node(settings, "a")
    for service in SERVICES:
        give(settings, service, "a")
    me = add_node(settings, "b")
    assert round_trips_per_beat(settings, proxy, me) == [1] * 5


def test_an_owner_heartbeat_is_one_database_round_trip_and_one_message(counted):
    settings, proxy = counted
    me = add_node(settings, "a")
    for service in SERVICES:
        give(settings, service, "a")
    transport = Recorded()
    assert round_trips_per_beat(settings, proxy, me) == [1] * 5
    proxy.reset_counts()
    run_cycle(settings, me, transport, Beat())
    assert transport.sent == [(Dispatch("app_script", 1), Dispatch("folder_monitor", 1))]


def test_a_heartbeat_that_marks_a_dead_peer_costs_one_more_round_trip(counted):
    settings, proxy = counted
    me = add_node(settings, "b")
    round_trips_per_beat(settings, proxy, me, beats=1)
    add_node(settings, "a", beat_age=60)
    proxy.reset_counts()
    decision = run_cycle(settings, me, Recorded(), Beat())
    assert any("marked a inactive" in part for part in decision.verdict.split("; "))
    assert proxy.round_trips == 2


def test_a_heartbeat_records_the_database_server_and_broker_and_when_each_changed(counted, caplog):
    settings, proxy = counted
    me = add_node(settings, "a")
    transport = Recorded()
    # Given a node whose beats reached one broker, then another (a Sentinel failover)
    run_cycle(settings, me, transport, Beat(broker_server="10.0.0.5:6379"))
    first = node_servers(settings)
    run_cycle(settings, me, transport, Beat(broker_server="10.0.0.5:6379"))
    assert node_servers(settings) == first
    run_cycle(settings, me, transport, Beat(broker_server="10.0.0.6:6379"))
    # Then the row says which database server answered (its own address, not the proxy's)
    # and which broker, and when the broker changed; the database has not changed
    server, changed, broker, broker_changed = node_servers(settings)
    assert server == first[0] and server.endswith(f":{database_port(settings)}")
    assert changed is None
    assert (first[2], first[3]) == ("10.0.0.5:6379", None)
    assert broker == "10.0.0.6:6379" and broker_changed is not None
    # And the same beat cost one round trip still
    proxy.reset_counts()
    run_cycle(settings, me, transport, Beat(broker_server="10.0.0.6:6379"))
    assert proxy.round_trips == 1


def node_servers(settings: Settings) -> tuple:
    return registry_of_a(
        settings, "database_server", "database_changed_at", "broker_server", "broker_changed_at"
    )


def registry_of_a(settings: Settings, *columns: str) -> tuple:
    """Node a's registry row, these columns."""
    with transaction(settings) as connection:
        return tuple(
            connection.execute(
                text(f"SELECT {', '.join(columns)} FROM server_registry WHERE node_name = 'a'")
            ).one()
        )


def database_port(settings: Settings) -> int:
    with transaction(settings) as connection:
        return int(connection.execute(text("SHOW port")).scalar_one())


def test_a_database_behind_what_the_node_saw_is_said_once(settings, caplog):
    # Given a node that read folder_monitor at epoch 6
    me = add_node(settings, "a")
    add_node(settings, "b")
    for _ in range(3):
        give(settings, "folder_monitor", "a")
        give(settings, "folder_monitor", "b")
    transport = Recorded()
    run_cycle(settings, me, transport, Beat())
    # When the database goes back to epoch 5 (a standby that had not received the change)
    with transaction(settings) as connection:
        connection.execute(text("ALTER TABLE service_status DISABLE TRIGGER USER"))
        connection.execute(
            text("UPDATE service_status SET epoch = 5 WHERE service_type = 'folder_monitor'")
        )
        connection.execute(text("ALTER TABLE service_status ENABLE TRIGGER USER"))
    with caplog.at_level(logging.WARNING, logger="workers.runtime.heartbeat"):
        for _ in range(3):
            run_cycle(settings, me, transport, Beat())
    # Then the node said so once, naming the service and both epochs
    said = [r.getMessage() for r in caplog.records if "database is behind" in r.getMessage()]
    assert len(said) == 1
    assert "folder_monitor is at epoch 5, an earlier heartbeat read epoch 6" in said[0]


def test_a_heartbeat_on_a_server_that_went_silent_fails_within_its_deadline(settings, database_url):
    # Given a node beating through a proxy, on a connection already open
    proxy = FaultProxy(database_target(database_url))
    try:
        settings = settings.model_copy(
            update={"database_url": database_url_via(database_url, proxy.port)}
        )
        me = add_node(settings, "a")
        run_cycle(settings, me, Recorded(), Beat())
        with transaction(settings) as connection:
            connection.execute(text("SELECT 1"))
        # When the server goes silent: packets acknowledged, no answer, no reset
        proxy.silence()
        # Then the heartbeat fails as an unavailable database instead of waiting forever,
        # on the open connection and on a new one (the connect timeout)
        for _ in range(2):
            with pytest.raises(DatabaseUnavailable):
                run_cycle(settings, me, Recorded(), Beat())
        # And so does a transaction of the node's other work
        with pytest.raises(DatabaseUnavailable), transaction(settings) as connection:
            connection.execute(text("SELECT 1"))
    finally:
        proxy.close()


def test_a_heartbeat_says_whether_the_node_s_links_are_encrypted(settings):
    me = add_node(settings, "a")
    # Given a node that reaches the database in the clear and says nothing of its broker
    run_cycle(settings, me, Recorded(), Beat())
    assert encryption(settings) == (False, None)
    # When its beat says its broker link is encrypted
    run_cycle(settings, me, Recorded(), Beat(broker_encrypted=True))
    assert encryption(settings) == (False, True)
    # And a beat that says nothing of it (a node of the previous release) leaves it as it was
    run_cycle(settings, me, Recorded(), Beat())
    assert encryption(settings) == (False, True)


def encryption(settings: Settings) -> tuple:
    return registry_of_a(settings, "database_encrypted", "broker_encrypted")


def test_the_previous_release_s_heartbeat_still_renews(settings):
    # Given a node, and its heartbeat as a node of the previous release sends it (eight
    # arguments, before revision 0013)
    me = add_node(settings, "a")
    with transaction(settings) as connection:
        answer = connection.execute(
            text(
                "SELECT failover_heartbeat(:node, CAST(:incarnation AS uuid), true, "
                "NULL, NULL, NULL, false, NULL)"
            ),
            {"node": me.name, "incarnation": me.incarnation},
        ).scalar_one()
    # Then it renews, and says nothing of encryption
    assert answer["renewed"] is True
    assert encryption(settings) == (None, None)
