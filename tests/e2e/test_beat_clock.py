"""The beat waits on the monotonic clock: a step of a node's wall clock (an NTP correction, a
VM resumed) neither silences its heartbeats nor costs it its services.

The step is made through the beat's own test hook (`FAILOVER_TEST_WALL_CLOCK_OFFSET_FILE`),
not libfaketime: its `DONT_FAKE_MONOTONIC=1` makes `time.sleep` fail."""

from __future__ import annotations

import pytest

from tests.support.cluster import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.mark.parametrize("step", [-30.0, 30.0])
def test_a_node_whose_wall_clock_steps_keeps_its_services(tmp_path, step, cluster):
    offset = tmp_path / "a-wall-clock-offset"
    offset.write_text("0")
    # Given a owns every service and b stands by in the same region
    cluster.start_live("a", "r1", FAILOVER_TEST_WALL_CLOCK_OFFSET_FILE=str(offset))
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    owners = cluster.owners()
    # When the wall clock a's beat reads steps by 30 s
    offset.write_text(f"{step:g}")
    # Then, while b beats through three of a's leases, a keeps beating and owning
    cluster.beats("b", 15)
    assert cluster.node_row("a").lease_fresh
    assert cluster.owners() == owners
    reasons = [row.reason for row in cluster.history()]
    assert set(reasons) == {"startup"}, reasons
