"""Far and encrypted: a node 150 ms from both stores, over verified TLS, is a full member.

Node `c` reaches PostgreSQL and Redis through delay proxies (75 ms each way), each link
encrypted end to end (the proxies pass TLS records through; the certificates name
127.0.0.1, which the node verifies). At default timings its lease never lapses from its
first live moment, and a beat costs the round trips it costs without TLS: TLS adds round
trips only when a connection is made. `status --json` and the metrics say that every link
is encrypted.
"""

from __future__ import annotations

import json
import sys
from contextlib import closing

import pytest
import requests

from tests.support.cluster import DEFAULT_TIMING, Cluster, wait_until
from tests.support.delay_proxy import DelayProxy
from tests.support.flower import free_port, serve, stop
from tests.support.pki import libpq_tls
from tests.support.renewals import RowWatch, never_lapsed_once_live
from tests.support.servers import Servers, fresh_database
from tests.support.tls import tls_stores

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
BEATS = 10
DATABASE_ROUND_TRIPS_PER_BEAT = 1.0
"""A standby's beat is one statement (`tests/integration/test_round_trips.py`)."""
BROKER_ROUND_TRIPS_PER_BEAT = 3.5
"""A standby's beat without TLS (`tests/e2e/test_far_regions.py`): its publish, its delivery,
and Celery's worker heartbeat every 2 s."""


def test_a_far_node_over_tls_keeps_its_lease_and_pays_no_round_trip_more_per_beat(tmp_path):
    with tls_stores(tmp_path) as stores:
        servers = Servers(stores.database_url("postgres"), stores.broker_url(), embedded=False)
        db_proxy = DelayProxy(("127.0.0.1", stores.postgres.port), one_way_delay=0.075)
        broker_proxy = DelayProxy(("127.0.0.1", stores.redis.port), one_way_delay=0.075)
        with fresh_database(servers) as database_url, closing(db_proxy), closing(broker_proxy):
            database = database_url.split("/")[-1].split("?")[0]
            far = {
                "FAILOVER_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:"
                f"{db_proxy.port}/{database}?{libpq_tls(stores.pki)}",
                "FAILOVER_BROKER_URL": stores.broker_url().replace(
                    f":{stores.redis.port}/", f":{broker_proxy.port}/"
                ),
            }
            cluster = Cluster(tmp_path, database_url, stores.broker_url(), **DEFAULT_TIMING)
            try:
                # Given a near owner a, and c starting 150 ms away, both over TLS
                cluster.start_live("a", "near")
                watch = RowWatch(cluster, "c")
                c = cluster.start("c", "far", **far)

                # Then from its first live moment c's lease never lapses (6 s, six beats)
                wait_until(lambda: watch.live_samples() > 120, 90, "6 s of c live")
                assert never_lapsed_once_live(watch.stop())
                assert c.alive()

                # And a beat costs what it costs without TLS
                cluster.beats("c", 2)
                db_proxy.reset_counts()
                broker_proxy.reset_counts()
                cluster.beats("c", BEATS)
                assert db_proxy.round_trips / BEATS <= DATABASE_ROUND_TRIPS_PER_BEAT, (
                    db_proxy.counts()
                )
                assert broker_proxy.round_trips / BEATS <= BROKER_ROUND_TRIPS_PER_BEAT, (
                    broker_proxy.counts()
                )

                # And status and the metrics say every node's links are encrypted
                done = cluster.cli("status", "--json")
                assert done.returncode == 0, done.stderr
                nodes = {node["name"]: node for node in json.loads(done.stdout)["nodes"]}
                for name in ("a", "c"):
                    assert nodes[name]["database_encrypted"] is True, nodes[name]
                    assert nodes[name]["broker_encrypted"] is True, nodes[name]
                assert _encrypted_metrics(cluster) == {
                    (store, node): 1.0 for store in ("database", "broker") for node in ("a", "c")
                }
            finally:
                cluster.close()


def _encrypted_metrics(cluster: Cluster) -> dict[tuple[str, str], float]:
    """The `failover_node_*_encrypted` samples of `failover metrics`, by store and node."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    server = serve(cluster, [sys.executable, "-m", "workers", "metrics", "--port", str(port)], url)
    try:
        text = requests.get(url, timeout=5).text
    finally:
        stop(server)
    found = {}
    for line in text.splitlines():
        for store in ("database", "broker"):
            if line.startswith(f"failover_node_{store}_encrypted{{"):
                node = line.split('node="', 1)[1].split('"', 1)[0]
                found[(store, node)] = float(line.rsplit(" ", 1)[1])
    return found
