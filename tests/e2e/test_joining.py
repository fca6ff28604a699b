"""Nodes join without a gap (issue 17): a node far from the stores is not live until its
first heartbeat through its own consumer, and from that moment its lease never lapses.

Node `c` reaches PostgreSQL and Redis through delay proxies (150 ms round trip), at default
timings. Its broker is held unreachable while it starts, so that it stays joining for
longer than a lease; the test samples c's registry row every 50 ms throughout and asserts
behaviour only: joining, c is never live and its name is held (a second process is
refused); from its first live sample on, every sample is live; and its start-up costs a
bounded number of round trips (counted by the proxies), so that none creeps back.
"""

from __future__ import annotations

import pytest

from tests.support.cluster import DEFAULT_TIMING, wait_until
from tests.support.renewals import RowWatch, never_lapsed_once_live
from tests.support.servers import (
    broker_url_via,
    database_url_via,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
BROKER_ROUND_TRIPS_TO_JOIN = 30
"""Broker round trips from the broker's return to c's first renewal, at most (25 measured):
the consumer's start (about eight connections: `SELECT` and kombu's `PING` each, queue and
remote-control declarations, the online event) and the first heartbeat's publish and
delivery. redis-py's default handshake (`HELLO`, `CLIENT MAINT_NOTIFICATIONS`, two `CLIENT
SETINFO`, a `PING`) adds about five per connection: 69 measured."""
DATABASE_ROUND_TRIPS_TO_REGISTER = 14
"""Database round trips from c's start to its registration, at most (13 measured): the
connection (the driver's and SQLAlchemy's first-connect queries), the command's name check,
and the registration in one statement (it took six: 18 in all)."""


def test_a_far_node_is_live_only_from_its_first_renewal_and_never_lapses_after(
    database_url, broker_url, far_proxies, cluster
):
    db_proxy, broker_proxy = far_proxies
    far = {
        "FAILOVER_DATABASE_URL": database_url_via(database_url, db_proxy.port),
        "FAILOVER_BROKER_URL": broker_url_via(broker_url, broker_proxy.port),
    }
    cluster.configure(**DEFAULT_TIMING)
    # Given a near node a, and c starting 150 ms away while its broker cannot be reached
    cluster.start_live("a", "near")
    broker_proxy.cut()
    db_proxy.reset_counts()
    watch = RowWatch(cluster, "c")
    c = cluster.start("c", "far", **far)
    wait_until(lambda: watch.samples and watch.samples[-1].joining, 60, "c to register")
    registration_round_trips = db_proxy.round_trips

    # Then, for longer than a lease, c holds its name but is not live, and owns nothing
    wait_until(lambda: len(watch.samples) > 80, 30, "4 s of samples")
    assert not any(sample.live for sample in watch.samples)
    assert all(sample.joining for sample in watch.samples)
    assert cluster.owned_by("a")
    # And a second process under its name is refused, saying that c is joining
    twin = cluster.start("c", "far", **far)
    assert twin.popen.wait(timeout=60) == 1
    assert "node c is already running" in twin.log() and "joining" in twin.log()

    # When the broker comes back
    broker_proxy.reset_counts()
    broker_proxy.restore()
    wait_until(lambda: watch.live_samples() > 0, 60, "c's first renewal")
    join_round_trips = broker_proxy.round_trips

    # Then from its first live moment c's lease never lapses (5 s, five beats)
    wait_until(lambda: watch.live_samples() > 100, 30, "5 s of c live")
    assert never_lapsed_once_live(watch.stop())
    assert c.alive()

    # And its start cost a bounded number of round trips
    assert registration_round_trips <= DATABASE_ROUND_TRIPS_TO_REGISTER, registration_round_trips
    assert join_round_trips <= BROKER_ROUND_TRIPS_TO_JOIN, join_round_trips

    # When c loses its broker, then its database, each for longer than a lease
    for proxy in (broker_proxy, db_proxy):
        proxy.cut()
        wait_until(lambda: not cluster.node_row("c").lease_fresh, 10, "c's lease to lapse")
        # Then it is live again only from a renewal, its consumer back, and never lapses
        # from that renewal on
        watch = RowWatch(cluster, "c")
        proxy.restore()
        wait_until(lambda watch=watch: watch.live_samples() > 60, 60, "3 s of c live again")
        assert never_lapsed_once_live(watch.stop())
        assert c.alive()
