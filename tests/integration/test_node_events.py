"""Node events for the timeline: a trigger on server_registry records starts, stops,
expiries, revivals and drains, and nothing for a plain renewal; they go with the ledgers'
retention."""

from __future__ import annotations

from sqlalchemy import text

from tests.support.registry import add_node
from workers.operations.timeline import WINDOWS, read_timeline
from workers.stores import ownership, registration, retention, store
from workers.stores.database import transaction


def events(settings) -> list[tuple[str, str]]:
    with transaction(settings) as connection:
        rows = connection.execute(text("SELECT node_name, event FROM node_event ORDER BY id"))
        return [(row.node_name, row.event) for row in rows]


def test_starts_drains_expiries_revivals_and_stops_are_recorded_and_renewals_are_not(settings):
    a = add_node(settings, "a")
    b = add_node(settings, "b")
    for _ in range(3):
        assert store.heartbeat(settings, a, True, store.Latency(1.0, 1.0, 2.0)) is not None
    assert events(settings) == [("a", "started"), ("b", "started")]
    with transaction(settings) as connection:
        registration.set_draining(connection, "a", True)
        registration.set_draining(connection, "a", False)
        connection.execute(
            text("UPDATE server_registry SET is_active = false WHERE node_name = 'b'")
        )
    assert store.heartbeat(settings, b, True, store.Latency()) is not None
    with transaction(settings) as connection:
        ownership.release_services(connection, a)
    # a new incarnation of the stopped a: a start, not a revival
    add_node(settings, "a")
    assert events(settings)[2:] == [
        ("a", "draining"), ("a", "undrained"), ("b", "expired"), ("b", "revived"),
        ("a", "stopped"), ("a", "started"),
    ]  # fmt: skip


def started_long_ago(settings) -> None:
    """Date the start (the registration's event) before the aged heartbeat, as it was."""
    with transaction(settings) as connection:
        connection.execute(text("UPDATE node_event SET at = at - interval '5 minutes'"))


def test_an_expiry_is_dated_at_the_end_of_the_lease_and_the_timeline_reads_it(settings):
    add_node(settings, "a", beat_age=60.0)
    started_long_ago(settings)
    with transaction(settings) as connection:
        connection.execute(text("UPDATE server_registry SET is_active = false"))
        expired, lapsed = connection.execute(
            text(
                "SELECT e.at, r.last_heartbeat_at + r.lease_timeout_s * interval '1 second' "
                "FROM node_event e JOIN server_registry r USING (node_name) "
                "WHERE e.event = 'expired'"
            )
        ).one()
        assert expired == lapsed
        timeline = read_timeline(connection, WINDOWS["15m"])
    assert timeline.nodes == [("a", "r1")]
    assert [e["event"] for e in timeline.node_events] == ["started", "expired"]


def test_a_lapse_nobody_marked_still_shows_the_node_dead(settings):
    add_node(settings, "a", beat_age=30.0)
    started_long_ago(settings)
    with transaction(settings) as connection:
        timeline = read_timeline(connection, WINDOWS["15m"])
    assert [e["event"] for e in timeline.node_events] == ["started", "expired"]


def test_node_events_are_pruned_with_the_ledgers_retention(settings):
    add_node(settings, "a")
    with transaction(settings) as connection:
        connection.execute(
            text(
                "INSERT INTO node_event (node_name, region, event, at) VALUES "
                "('old', 'r1', 'started', clock_timestamp() - interval '31 days'), "
                "('old', 'r1', 'stopped', clock_timestamp() - interval '30.5 days')"
            )
        )
        assert retention.prune_node_events(connection, 30, limit=1) == 1
        assert retention.prune_node_events(connection, 30) == 1
        assert retention.prune_node_events(connection, 30) == 0
    assert events(settings) == [("a", "started")]
