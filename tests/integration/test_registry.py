"""Node registration, lease renewal, release and the history trigger, on real PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.support.registry import add_node, give, history, owner_and_epoch
from workers.errors import Refused
from workers.settings.process import new_incarnation
from workers.stores import ownership, registration, store
from workers.stores.database import transaction
from workers.stores.registration import Registration


def node_row(settings, name):
    with transaction(settings) as connection:
        return connection.execute(
            text("SELECT * FROM server_registry WHERE node_name = :n"), {"n": name}
        ).one()


def test_a_live_name_cannot_be_registered_twice(settings):
    add_node(settings, "a")
    with pytest.raises(Refused, match="node a is already running"), transaction(settings) as c:
        registration.register_node(c, Registration("a", "r1", 1.5, 0.3), new_incarnation())


def test_a_dead_name_is_registered_again_with_a_new_incarnation_and_keeps_draining(settings):
    first = add_node(settings, "a", beat_age=10)
    with transaction(settings) as connection:
        connection.execute(text("UPDATE server_registry SET draining = true"))
        registration.register_node(
            connection, Registration("a", "r2", 1.5, 0.3), "0" * 8 + "-0000-4000-8000-" + "0" * 12
        )
    row = node_row(settings, "a")
    assert str(row.incarnation) != first.incarnation
    assert (row.region, row.is_active, row.draining) == ("r2", False, True)
    assert row.joining_until is not None


def renew(settings, me):
    return store.heartbeat(settings, me, True, store.Latency()) is not None


def test_renewal_keeps_an_unbroken_lease_and_restarts_a_lapsed_one(settings):
    fresh = add_node(settings, "a", lease_age=100)
    lapsed = add_node(settings, "b", beat_age=10, lease_age=100)
    assert renew(settings, fresh)
    assert renew(settings, lapsed)
    a, b = node_row(settings, "a"), node_row(settings, "b")
    assert (a.last_heartbeat_at - a.lease_started_at).total_seconds() > 90
    assert (b.last_heartbeat_at - b.lease_started_at).total_seconds() < 1


def test_a_late_renewal_restarts_the_judging_window_though_the_lease_held(settings):
    # Given a node (heartbeat 0.3 s, lease 1.5 s) whose last beat is 0.6 s old: still leased,
    # but two beats late (an outage or a pause the node itself could not see)
    late = add_node(settings, "a", beat_age=0.6, lease_age=100)
    # When it renews
    assert renew(settings, late)
    # Then its judging window starts now: its peers get a whole lease before it judges them
    a = node_row(settings, "a")
    assert (a.last_heartbeat_at - a.lease_started_at).total_seconds() < 0.05


def test_one_heartbeat_stores_the_latency_the_node_measured(settings):
    me = add_node(settings, "a")
    snapshot = store.heartbeat(settings, me, True, store.Latency(151.5, 149.0, 420.0))
    assert snapshot is not None and snapshot.node("a").is_live(snapshot.now)
    row = node_row(settings, "a")
    assert (row.db_round_trip_ms, row.broker_round_trip_ms, row.heartbeat_cycle_ms) == (
        151.5,
        149.0,
        420.0,
    )


def test_an_unhealthy_application_stops_renewal_but_still_reads_the_cluster(settings):
    me = add_node(settings, "a", beat_age=1.0)
    before = node_row(settings, "a").last_heartbeat_at
    snapshot = store.heartbeat(settings, me, False, store.Latency())
    assert snapshot is not None and [n.name for n in snapshot.nodes] == ["a"]
    row = node_row(settings, "a")
    assert row.last_heartbeat_at == before and row.app_healthy is False


def test_release_frees_services_at_a_new_epoch_and_stops_renewal(settings):
    me = add_node(settings, "a")
    epoch = give(settings, "folder_monitor", "a")
    with transaction(settings) as connection:
        assert ownership.release_services(connection, me) == [("folder_monitor", epoch + 1)]
    assert not renew(settings, me)
    assert owner_and_epoch(settings, "folder_monitor") == (None, epoch + 1)
    assert history(settings, "folder_monitor")[-1] == ("a", None, epoch + 1, "release")
    assert node_row(settings, "a").is_active is False


def test_the_database_refuses_an_owner_change_without_epoch_plus_one(settings):
    add_node(settings, "a")
    with pytest.raises(DBAPIError, match="raise the epoch by one"), transaction(settings) as c:
        c.execute(
            text(
                "UPDATE service_status SET service_registry_id = "
                "(SELECT id FROM server_registry WHERE node_name = 'a')"
            )
        )


def test_the_database_refuses_an_epoch_change_without_an_owner_change(settings):
    with pytest.raises(DBAPIError, match="without a change of owner"), transaction(settings) as c:
        c.execute(text("UPDATE service_status SET epoch = epoch + 5"))


def test_history_is_append_only(settings):
    add_node(settings, "a")
    give(settings, "app_script", "a")
    with pytest.raises(DBAPIError, match="append-only"), transaction(settings) as c:
        c.execute(text("DELETE FROM ownership_history"))
