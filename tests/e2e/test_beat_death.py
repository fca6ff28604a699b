"""A node does not outlive its beat: when the beat thread dies of an exception, the node
releases its services and exits with a failure code (systemd restarts it), instead of going
on consuming moves it can never renew."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cluster import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
FAULT = Path(__file__).parents[1] / "support" / "beat_fault"


def broken_beat(trigger: Path) -> dict[str, str]:
    """The environment of a node whose beat's `time.sleep` fails once `trigger` exists."""
    path = os.pathsep.join(filter(None, [str(FAULT), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FAILOVER_TEST_BEAT_SLEEP_FAILS": str(trigger)}


def test_a_node_whose_beat_dies_exits_and_its_services_move_at_once(tmp_path, cluster):
    trigger = tmp_path / "beat-sleep-fails"
    # Given a owns every service and b stands by
    a = cluster.start_live("a", "r1", **broken_beat(trigger))
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    # When a's beat thread dies of an OSError from time.sleep
    trigger.touch()
    # Then a exits with code 1, saying why in one line
    wait_until(lambda: not a.alive(), 30, "a to exit")
    assert a.popen.returncode == 1
    assert "node a: its beat stopped (OSError: [Errno 22] Invalid argument)" in a.log()
    # And it released its services on the way out: b has them without waiting for a lease
    wait_until(lambda: cluster.owned_by("b"), 20, "b to take every service")
    released = [row for row in cluster.history() if row.reason == "release"]
    assert {row.service_type for row in released} == set(cluster.owners())
