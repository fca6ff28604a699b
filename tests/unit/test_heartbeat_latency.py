"""A node's own latency: kept for its next heartbeat, and a warning when the cycle is long."""

from __future__ import annotations

import logging
import time

from workers.fence import local_state
from workers.runtime.heartbeat import Beat, _measure
from workers.settings import load_settings
from workers.settings.process import Identity, new_incarnation

ME = Identity("c", new_incarnation())


def test_the_cycle_is_kept_and_a_long_one_is_warned_about_once(caplog):
    settings = load_settings(region="far", region_lease_timeout={"far": 3.0})
    try:
        caplog.set_level(logging.WARNING)
        # Given a beat scheduled 0.4 s ago: a cycle well within a third of the 3 s lease
        _measure(settings, ME, 150.0, Beat(tick=time.time() - 0.4))
        assert 400 <= local_state.recall(ME.incarnation, "heartbeat_cycle_ms") < 1000
        assert local_state.recall(ME.incarnation, "db_round_trip_ms") == 150.0
        assert not caplog.records
        # When two beats take 1.2 s from their tick to the renewed lease
        _measure(settings, ME, 600.0, Beat(tick=time.time() - 1.2))
        _measure(settings, ME, 600.0, Beat(tick=time.time() - 1.2))
        # Then the node warns once, naming its region and what to change
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        assert "over a third of its 3 s lease" in warnings[0]
        assert "FAILOVER_REGION_LEASE_TIMEOUT for region far" in warnings[0]
    finally:
        local_state.forget(ME.incarnation)
