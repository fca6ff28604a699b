"""Staggered heartbeats: deterministic per node, spread apart, expiring within the interval."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from beat_schedule import SlotTimer, Staggered, build_schedule, stagger_phase
from beat_schedule.clock import OFFSET_FILE_VARIABLE, wall_time


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


def test_a_wall_clock_step_while_the_timer_runs_changes_nothing():
    schedule = Staggered(interval=1.0, phase=0.25)
    # Given a timer armed at wall time 100.0, monotonic time 5.0: due at the 100.25 slot
    timer = SlotTimer(schedule, wall=100.0, now=5.0)
    assert timer.left(5.0) == 0.25
    # When it fires and the wall clock has stepped back 30 s meanwhile
    timer.next_slot(wall=70.3, now=5.3)
    # Then the next beat is still within one interval, not 30 s away
    assert 0 < timer.left(5.3) <= 1.0


def test_the_wait_for_a_slot_stays_within_one_interval_for_any_wall_time():
    schedule = Staggered(interval=0.3, phase=0.1)
    for wall in (0.0, 1.7e9, -1.7e9, 1e300, -1e300):
        assert 0 < schedule.until_next_slot(wall) <= 0.3


def test_the_test_hook_offsets_the_beats_wall_clock(tmp_path, monkeypatch):
    stepped, broken = tmp_path / "stepped", tmp_path / "broken"
    stepped.write_text("-30")
    broken.write_text("inf")
    monkeypatch.setenv(OFFSET_FILE_VARIABLE, str(stepped))
    assert wall_time() < time.time() - 29
    for unusable in (broken, tmp_path / "missing"):
        monkeypatch.setenv(OFFSET_FILE_VARIABLE, str(unusable))
        assert wall_time() >= time.time() - 1
