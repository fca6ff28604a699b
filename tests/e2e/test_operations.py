"""Operating the cluster end to end: manual failover, drain, failback, history."""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
SERVICES = {"folder_monitor", "app_script"}


def one_line(result, code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def three_nodes(cluster: Cluster):
    a = cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    return a, cluster.start_live("b", "r1"), cluster.start_live("c", "r2")


def test_manual_move_refusals_change_nothing(cluster):
    _a, b, _c = three_nodes(cluster)
    d = cluster.start_live("d", "r1")
    d.terminate()
    before = cluster.dump()
    # Each refusal is one line, with the right exit code, and leaves the database as it was
    assert "unknown service" in one_line(cluster.cli("move", "nosuch", "--to", "b"), 2)
    assert "unknown node" in one_line(cluster.cli("move", "folder_monitor", "--to", "zz"), 2)
    assert "already owns" in one_line(cluster.cli("move", "folder_monitor", "--to", "a"), 1)
    assert "d is stopped" in one_line(cluster.cli("move", "folder_monitor", "--to", "d"), 1)
    # A target that does not consume within the timeout: the request expires unused
    b.pause()
    try:
        refused = cluster.cli("move", "folder_monitor", "--to", "b", "--timeout", "2")
    finally:
        b.resume()
    assert "did not take folder_monitor within 2 s" in one_line(refused, 1)
    cluster.beats("b", 4)
    assert cluster.dump() == before
    assert "took folder_monitor" not in b.log()


def test_manual_move_hands_over_and_fences_the_old_owner(cluster):
    _a, _b, _c = three_nodes(cluster)
    wait_until(lambda: cluster.ticks("folder_monitor", 1) > 2, 20, "a to work at epoch 1")
    # When an operator moves folder_monitor to c (another region), with a reason
    moved = cluster.cli("move", "folder_monitor", "--to", "c", "--reason", "patching a")
    # Then c owns it at epoch 2, the history says who and why, and a's work at epoch 1 stops
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == "moved folder_monitor to c at epoch 2"
    assert cluster.owners()["folder_monitor"] == ("c", 2)
    event = cluster.history()[-1]
    assert (event.from_node, event.to_node, event.reason, event.detail) == (
        "a",
        "c",
        "manual",
        "patching a",
    )
    assert "@" in event.actor
    stopped_at = cluster.ticks("folder_monitor", 1)
    cluster.beats("a", 4)
    assert cluster.ticks("folder_monitor", 1) == stopped_at
    wait_until(lambda: cluster.ticks("folder_monitor", 2) > 2, 20, "c to work at epoch 2")
    # And a move with no target goes to the best candidate: a's region first
    auto = cluster.cli("move", "app_script")
    assert auto.stdout.strip() == "moved app_script to b at epoch 2", auto.stderr
    # And the history command shows both moves, newest first
    listed = json.loads(cluster.cli("history", "--json", "--since", "1h").stdout)
    assert [(e["service"], e["to"], e["reason"]) for e in listed[:2]] == [
        ("app_script", "b", "manual"),
        ("folder_monitor", "c", "manual"),
    ]
    assert "unknown service" in one_line(cluster.cli("history", "nosuch"), 2)
    assert "--since" in one_line(cluster.cli("history", "--since", "yesterday-ish"), 2)


def test_drain_survives_a_restart_and_undrain_returns_the_node(cluster):
    a, b, _c = three_nodes(cluster)
    # When a is drained, its services go to the best candidate (b, same region)
    drained = cluster.cli("drain", "a")
    assert drained.returncode == 0, drained.stderr
    assert "a owns no service" in drained.stdout
    assert cluster.owners() == {service: ("b", 2) for service in SERVICES}
    # And a stays drained across a restart, and out of every takeover
    a.terminate()
    cluster.start_live("a", "r1")
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert {n["name"]: n["draining"] for n in status["nodes"]}["a"] is True
    b.crash()
    wait_until(lambda: cluster.owned_by("c"), 30, "c to take over from b")
    cluster.beats("a", 3)
    assert cluster.owned_by("c")
    # When c is the last node that can run them, draining c is refused and changes nothing
    before = cluster.dump()
    assert "last live node" in one_line(cluster.cli("drain", "c"), 1)
    assert cluster.dump() == before
    # When a is undrained, it is a normal standby again (no failback by default)
    assert cluster.cli("undrain", "a").returncode == 0
    assert cluster.node_row("a").draining is False
    cluster.beats("a", 3)
    assert cluster.owned_by("c")
    # And a forced drain of c keeps nothing from moving: a can take them now
    forced = cluster.cli("drain", "c", "--force")
    assert forced.returncode == 0, forced.stderr
    assert cluster.owned_by("a")


def fail_over_from_a_to_b(cluster: Cluster) -> None:
    """a claims everything, b joins, a crashes and b takes over."""
    a = cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    a.crash()
    wait_until(lambda: cluster.owned_by("b"), 30, "b to take over")


PREFER_A = json.dumps(
    {"folder_monitor": {"preferred_nodes": ["a"], "failback": True, "failback_dwell": 4}}
)


def test_failback_waits_for_the_dwell_and_a_flapping_node_never_gets_it(cluster):
    cluster.configure(FAILOVER_PLACEMENT=PREFER_A)
    fail_over_from_a_to_b(cluster)
    # When a flaps: it comes back, lives for less than the dwell, and dies again
    for _ in range(2):
        cluster.lapsed("a")
        flapper = cluster.start_live("a", "r1")
        cluster.beats("a", 2)
        flapper.crash()
        assert cluster.owners()["folder_monitor"] == ("b", 2)
    # When a comes back for good, after the dwell it takes folder_monitor back
    cluster.lapsed("a")
    cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owners()["folder_monitor"][0] == "a", 30, "failback to a")
    event = cluster.history()[-1]
    assert (event.from_node, event.to_node, event.reason, event.epoch) == (
        "b",
        "a",
        "failback",
        3,
    )
    # And app_script, which has no placement, stays where it is
    assert cluster.owners()["app_script"] == ("b", 2)
    placement = json.loads(cluster.cli("status", "--json").stdout)["services"]
    assert (
        "failback after 4 s" in {s["service"]: s for s in placement}["folder_monitor"]["placement"]
    )


def test_no_failback_outside_the_failback_window(cluster):
    hour = cluster.query("SELECT extract(hour FROM clock_timestamp() AT TIME ZONE 'UTC') AS h")[0].h
    start, end = (int(hour) + 2) % 24, (int(hour) + 3) % 24
    placement = json.loads(PREFER_A)
    placement["folder_monitor"].update(
        failback_dwell=1, failback_window=f"{start:02d}:00-{end:02d}:00"
    )
    cluster.configure(FAILOVER_PLACEMENT=json.dumps(placement))
    fail_over_from_a_to_b(cluster)
    cluster.lapsed("a")
    cluster.start_live("a", "r1")
    cluster.beats("a", 10)
    assert cluster.owners()["folder_monitor"] == ("b", 2)
