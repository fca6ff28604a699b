"""Staggered heartbeats: deterministic per node, spread apart, expiring within the interval."""

from __future__ import annotations

from datetime import UTC, datetime

from beat_schedule import Staggered, build_schedule, stagger_phase


def test_phase_is_stable_for_a_name_and_differs_between_names():
    assert stagger_phase("node-a", 1.0) == stagger_phase("node-a", 1.0)
    phases = {round(stagger_phase(f"node-{i}", 1.0), 6) for i in range(20)}
    assert len(phases) == 20
    assert all(0 <= phase < 1.0 for phase in phases)


def test_slots_fall_at_phase_plus_whole_intervals():
    schedule = Staggered(interval=2.0, phase=0.5)
    assert schedule.next_slot(100.0) == 100.5
    assert schedule.next_slot(100.5) == 102.5
    assert schedule.next_slot(101.9) == 102.5


def test_a_missed_slot_fires_once_not_once_per_missed_tick():
    schedule = Staggered(interval=1.0, phase=0.0)
    long_ago = datetime.fromtimestamp(1_000_000.0, tz=UTC)
    due, next_in = schedule.is_due(long_ago)
    assert due
    assert 0 < next_in <= 1.0


def test_schedule_holds_only_this_nodes_heartbeat_on_its_own_queue_with_expiry():
    schedule = build_schedule("b", "inc-1", 0.5)
    (entry,) = schedule.values()
    assert entry["task"] == "failover.heartbeat"
    assert entry["args"] == ("b", "inc-1")
    assert entry["options"] == {"queue": "node.b", "expires": 0.5}
