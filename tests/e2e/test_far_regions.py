"""Far regions end to end: a node 150 ms from PostgreSQL and Redis is a full member.

Node `c` reaches both stores through delay proxies (75 ms each way, real TCP); `a` and `b`
reach them directly. Default timings (heartbeat 1 s, lease 3 s). The test asserts
behaviour only: `c` never lapses, nothing moves, `c` owns and works both services with no
rejected side effect, and its death is taken over by a near node. Times go to
`tests/benchmarks/far_regions.py`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.cluster import DEFAULT_TIMING, Cluster, wait_until
from tests.support.delay_proxy import DelayProxy
from tests.support.servers import (
    broker_target,
    broker_url_via,
    database_target,
    database_url_via,
    redis_client,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
SERVICES = ("app_script", "folder_monitor")


class LapseWatch:
    """Samples a node's lease from the database every 0.25 s, in a thread, counting lapses."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.samples = self.lapses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            row = self.cluster.node_row(self.name)
            self.samples += 1
            self.lapses += 0 if row.lease_fresh and row.is_active else 1

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.samples, self.lapses


@pytest.fixture
def far(database_url: str, broker_url: str) -> Iterator[dict[str, str]]:
    """The environment of a node 150 ms round trip away from both stores."""
    db_proxy = DelayProxy(database_target(database_url), one_way_delay=0.075)
    broker_proxy = DelayProxy(broker_target(broker_url), one_way_delay=0.075)
    try:
        yield {
            "FAILOVER_DATABASE_URL": database_url_via(database_url, db_proxy.port),
            "FAILOVER_BROKER_URL": broker_url_via(broker_url, broker_proxy.port),
        }
    finally:
        db_proxy.close()
        broker_proxy.close()


def test_a_node_150_ms_away_keeps_its_lease_owns_and_works_at_default_settings(
    tmp_path, far, cluster
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ran = tmp_path / "ran.log"
    script = {"argv": [sys.executable, "-c", f"open({str(ran)!r}, 'a').write('x')"]}
    env = {
        **DEFAULT_TIMING,
        "FAILOVER_HOT_FOLDER": str(inbox),
        "FAILOVER_SCRIPTS": json.dumps({"stamp": {**script, "interval": 4}}),
    }
    cluster.configure(**env)
    # Given a near owner a, a near standby b, and c in another region 150 ms away
    cluster.start_live("a", "near")
    wait_until(lambda: cluster.owned_by("a"), 30, "a to claim both services")
    cluster.start_live("b", "near")
    cluster.start_live("c", "far", **far)

    # Then for 30 s c never lapses and nothing moves
    watch = LapseWatch(cluster, "c")
    time.sleep(30)
    samples, lapses = watch.stop()
    assert samples > 60 and lapses == 0
    assert cluster.owners() == {service: ("a", 1) for service in SERVICES}

    # When c is given both services by hand
    for service in SERVICES:
        moved = cluster.cli("move", service, "--to", "c", "--timeout", "30")
        assert moved.returncode == 0, moved.stderr
    assert cluster.owned_by("c")
    epoch = cluster.owners()["folder_monitor"][1]

    # Then for 30 s it processes dropped files and runs its script, with no lapse
    watch = LapseWatch(cluster, "c")
    names = [f"far-{i:02d}.txt" for i in range(20)]
    for name in names:
        (inbox / name).write_text(name)
        time.sleep(1.0)
    processed = inbox / "processed"
    wait_until(
        lambda: processed.exists() and len(list(processed.iterdir())) == len(names),
        60,
        "c to process every file",
    )
    samples, lapses = watch.stop()
    assert lapses == 0
    assert sorted(path.name for path in processed.iterdir()) == names
    runs = cluster.query(
        "SELECT node, status FROM script_run WHERE script = 'stamp' AND epoch = :e",
        e=cluster.owners()["app_script"][1],
    )
    assert {run.node for run in runs} == {"c"}
    assert ("c", "succeeded") in {(run.node, run.status) for run in runs}
    assert {run.status for run in runs} <= {"succeeded", "running"}
    assert cluster.node_row("c").rejected_side_effects == 0
    assert cluster.owners()["folder_monitor"] == ("c", epoch)
    row = cluster.node_row("c")
    assert row.db_round_trip_ms >= 150 and row.broker_round_trip_ms >= 150
    shown = json.loads(cluster.cli("status", "--json").stdout)
    far_node = next(node for node in shown["nodes"] if node["name"] == "c")
    assert far_node["db_round_trip_ms"] >= 150 and far_node["heartbeat_cycle_ms"] >= 300

    # When c is killed, Then a near node holds both services at a higher epoch
    cluster.running("c").crash()
    wait_until(
        lambda: all(
            owner in ("a", "b") and number > epoch for owner, number in cluster.owners().values()
        ),
        30,
        "a near node to take over from c",
    )


def test_a_gracefully_stopped_owner_hands_its_services_to_its_own_region(cluster):
    cluster.configure(**DEFAULT_TIMING)
    cluster.start_live("x", "other")
    cluster.start_live("y", "other")
    for trial in range(3):
        # Given a owns everything, b is in a's region, x and y in another region
        owner, peer = f"a{trial}", f"b{trial}"
        cluster.start_live(owner, "home")
        cluster.start_live(peer, "home")
        for service in SERVICES:
            moved = cluster.cli("move", service, "--to", owner)
            assert moved.returncode == 0, moved.stderr
        # When a stops gracefully (SIGTERM)
        assert cluster.running(owner).terminate() == 0
        # Then every service goes to b, its region's live peer, not to x or y
        wait_until(lambda peer=peer: cluster.owned_by(peer), 20, f"{peer} to take over")
        cluster.running(peer).terminate()


def waiting_by_task(broker_url: str, queue: str) -> dict[str, int]:
    """The messages waiting in a node's Redis list, counted by task name."""
    counts: dict[str, int] = {}
    for raw in redis_client(broker_url).lrange(queue, 0, -1):
        task = json.loads(raw)["headers"]["task"]
        counts[task] = counts.get(task, 0) + 1
    return counts


def test_a_node_slower_than_its_beat_never_has_a_backlog(tmp_path, database_url, broker_url):
    # Given the only node, owner of both services, then 0.7 s round trip from its broker: it
    # takes one message off its queue per round trip, fewer than its beat and work would send
    proxy = DelayProxy(broker_target(broker_url))
    cluster = Cluster(tmp_path, database_url, broker_url, **DEFAULT_TIMING)
    try:
        slow = {"FAILOVER_BROKER_URL": broker_url_via(broker_url, proxy.port)}
        cluster.start_live("c", "far", **slow)
        wait_until(lambda: cluster.owned_by("c"), 60, "c to own both services")
        proxy.one_way_delay = 0.35
        # When it runs for 20 s, Then at no moment does more than one heartbeat and one
        # service-work message wait in its queue: it skips beats instead of queueing them
        most: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for task, count in waiting_by_task(broker_url, "node.c").items():
                most[task] = max(most.get(task, 0), count)
            time.sleep(0.05)
        assert most.get("failover.heartbeat", 0) <= 1
        assert most.get("failover.service_work", 0) <= 1
        assert cluster.ticks("folder_monitor", 1) > 0
    finally:
        cluster.close()
        proxy.close()


def test_a_heartbeat_costs_a_small_fixed_number_of_broker_round_trips(
    tmp_path, database_url, broker_url
):
    # Given an owner a and a standby b, each reaching Redis through its own counting proxy
    proxies = {name: DelayProxy(broker_target(broker_url)) for name in ("a", "b")}
    cluster = Cluster(tmp_path, database_url, broker_url, **DEFAULT_TIMING)
    try:
        for name, proxy in proxies.items():
            cluster.start_live(
                name, "near", FAILOVER_BROKER_URL=broker_url_via(broker_url, proxy.port)
            )
            wait_until(lambda: cluster.owners()["app_script"][0] == "a", 30, "a to own")
        cluster.beats("b", 2)
        # When each beats ten more times
        for proxy in proxies.values():
            proxy.reset_counts()
        cluster.beats("b", 10)
        per_beat = {name: proxy.round_trips / 10 for name, proxy in proxies.items()}
        # Then a standby costs about 2.5 (publish, delivery, and Celery's worker heartbeat
        # every 2 s) and an owner 2 more (its one service-work message): task events or ack
        # emulation would add 2 or more per message
        assert per_beat["b"] <= 3.5, per_beat
        assert per_beat["a"] <= 5.5, per_beat
        assert cluster.ticks("app_script", 1) >= 10
    finally:
        cluster.close()
        for proxy in proxies.values():
            proxy.close()
