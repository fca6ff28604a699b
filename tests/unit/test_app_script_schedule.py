"""Script schedules: which slot is due, and how many passed (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workers.services.app_script.schedule import Due, due, next_due
from workers.settings import ScriptSettings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_interval_is_due_once_per_slot_and_missed_slots_collapse_into_one():
    every_minute = ScriptSettings(argv=["true"], interval=60)
    assert due(every_minute, T0, T0 + timedelta(seconds=59)) is None
    one = due(every_minute, T0, T0 + timedelta(seconds=61))
    assert (one.at, one.slots) == (T0 + timedelta(seconds=60), 1)
    many = due(every_minute, T0, T0 + timedelta(minutes=10, seconds=5))
    assert (many.at, many.slots) == (T0 + timedelta(minutes=10), 10)


def test_an_interval_one_slot_behind_takes_the_older_slot_and_loses_no_run():
    every_second = ScriptSettings(argv=["true"], interval=1)
    # A beat a little late sees two slots passed: it runs the older, the next beat the newer
    late = due(every_second, T0, T0 + timedelta(seconds=2.05))
    assert late == Due(T0 + timedelta(seconds=1), 1)
    assert due(every_second, late.at, T0 + timedelta(seconds=3.0)) == Due(
        T0 + timedelta(seconds=2), 1
    )


def test_cron_finds_the_latest_passed_slot():
    hourly = ScriptSettings(argv=["true"], cron="0 * * * *")
    assert due(hourly, T0, T0 + timedelta(minutes=59)) is None
    late = due(hourly, T0, T0 + timedelta(hours=3, minutes=1))
    assert (late.at, late.slots) == (T0 + timedelta(hours=3), 3)
    assert next_due(hourly, T0) == T0 + timedelta(hours=1)


def test_a_script_without_schedule_runs_only_on_demand():
    assert due(ScriptSettings(argv=["true"]), T0, T0 + timedelta(days=9)) is None
