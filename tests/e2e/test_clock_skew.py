"""Cross-node requests judged on the database clock: a node whose wall clock is off still
takes a manual move, a drain handover and an on-demand script run (libfaketime)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.test_services import config, services_cluster
from tests.support.cluster import Cluster, wait_until
from tests.support.handlers import workers_that_handled
from tests.support.replicas import faketime_library

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(faketime_library() is None, reason="libfaketime is not installed"),
]

SCRIPT = f"""
[scripts.stamp]
argv = ["{sys.executable}", "-c", "print('stamped')"]
timeout = 10
"""


def skewed(seconds: float) -> dict[str, str]:
    """The environment of a process whose wall clock runs `seconds` ahead of the host's.

    Its monotonic clock is faked alike (libfaketime 0.9.10 breaks Python's `time.sleep`
    when only the wall clock is): every process of the node shares the same offset."""
    return {"LD_PRELOAD": str(faketime_library()), "FAKETIME": f"{seconds:+g}s"}


def scripts_cluster(tmp_path: Path, database_url: str, broker_url: str) -> Cluster:
    toml = tmp_path / "failover.toml"
    toml.write_text(SCRIPT)
    return Cluster(tmp_path, database_url, broker_url, FAILOVER_CONFIG=str(toml))


def test_move_and_run_script_onto_a_node_an_hour_ahead(tmp_path, database_url, broker_url):
    cluster = scripts_cluster(tmp_path, database_url, broker_url)
    try:
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        ahead = cluster.start_live("b", "r1", **skewed(3600))
        # When an operator moves both services onto b, whose clock is one hour ahead
        for service in ("folder_monitor", "app_script"):
            moved = cluster.cli("move", service, "--to", "b")
            # Then b takes each at once: the request's deadline is on the database clock
            assert moved.returncode == 0, moved.stderr
            assert moved.stdout.strip() == f"moved {service} to b at epoch 2"
        assert cluster.owned_by("b")
        # And b, owner of app_script, runs a script asked for from this host
        ran = cluster.cli("run-script", "stamp", "--wait")
        assert ran.returncode == 0, ran.stderr
        assert "stamped" in ran.stdout
        assert "expired" not in ahead.log()
    finally:
        cluster.close()


@pytest.mark.parametrize("seconds", [1.5, -1.5])
def test_a_drain_completes_with_a_skewed_target(tmp_path, database_url, broker_url, seconds):
    cluster = scripts_cluster(tmp_path, database_url, broker_url)
    try:
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1", **skewed(seconds))
        # When a is drained and its only successor's clock is off by a second and a half
        drained = cluster.cli("drain", "a", "--timeout", "20")
        # Then the handovers reach b and the drain completes
        assert drained.returncode == 0, (drained.stdout, drained.stderr)
        assert "a owns no service" in drained.stdout
        assert cluster.owned_by("b")
    finally:
        cluster.close()


def test_a_request_that_timed_out_never_runs_on_a_node_an_hour_behind(
    tmp_path, database_url, broker_url
):
    cluster = scripts_cluster(tmp_path, database_url, broker_url)
    try:
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        # (b's lease is long: the move is refused outright if b's lease has run out while it
        # is paused, before the command, slow to start on a loaded machine, checks it)
        behind = cluster.start_live("b", "r1", FAILOVER_LEASE_TIMEOUT="30", **skewed(-3600))
        # When a move to b times out while b is paused
        behind.pause()
        try:
            refused = cluster.cli("move", "folder_monitor", "--to", "b", "--timeout", "2")
        finally:
            behind.resume()
        assert refused.returncode == 1, refused.stderr
        assert "did not take folder_monitor within 2 s" in refused.stderr
        # Then b, whose clock says the request is an hour from due, drops it when it wakes:
        # the move never happens (a takeover, if a loaded machine lapsed a's short lease, is
        # not the request and is not what this test is about)
        cluster.beats("b", 3)
        assert "dropped failover.manual_failover" in behind.log()
        assert not [row for row in cluster.history() if row.reason == "manual"]
        assert "reason manual" not in behind.log()
    finally:
        cluster.close()


def test_shared_handler_batches_run_on_a_node_an_hour_ahead(tmp_path, database_url, broker_url):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cluster = services_cluster(
        tmp_path,
        database_url,
        broker_url,
        config(tmp_path, inbox, settle=0),
        FAILOVER_FOLDER_DISPATCH="shared",
        FAILOVER_FOLDER_BATCH_SIZE="5",
        TEST_HANDLER_SECONDS="0.02",
    )
    try:
        a = cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        ahead = cluster.start_live("b", "r1", **skewed(3600))
        # When files arrive and a's batches go to the shared queue, consumed by a and b
        for i in range(200):
            (inbox / f"shared-{i:03}.dat").write_text("x")
        processed = inbox / "processed"
        wait_until(
            lambda: processed.exists() and len(list(processed.iterdir())) == 200,
            60,
            "all files processed",
        )
        # Then b, an hour ahead, ran the batches it took instead of dropping them
        nodes = {a.pid, ahead.pid}
        assert workers_that_handled(tmp_path / "handled.log", nodes) == nodes
        assert "dropped" not in ahead.log()
    finally:
        cluster.close()
