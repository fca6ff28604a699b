"""Invariant 11: a heartbeat costs a small, fixed number of database round trips.

The node's database traffic goes through a counting proxy (`tests/support/delay_proxy.py`)
that sees every exchange on the wire; the real heartbeat code runs against the real
PostgreSQL behind it. A round trip is counted each time the server answers after the
client spoke, so a `BEGIN` or a pool ping sent on its own would show.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.delay_proxy import DelayProxy
from tests.support.registry import add_node, give
from tests.support.servers import database_target, database_url_via
from workers.decide import Acquire, Dispatch, Handover
from workers.heartbeat import Beat, run_cycle
from workers.settings import Settings

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


@pytest.fixture
def counted(settings: Settings, database_url: str) -> Iterator[tuple[Settings, DelayProxy]]:
    proxy = DelayProxy(database_target(database_url))
    try:
        url = database_url_via(database_url, proxy.port)
        yield settings.model_copy(update={"database_url": url}), proxy
    finally:
        proxy.close()


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
