"""When each script runs: its slots, and taking a due slot on the owner.

A script runs on an interval or a cron expression. Each script's last slot run is kept in
`script_schedule`; at each beat the owner reads the schedules (with its ticks, in the same
round trip, when it can: `read_at_tick`) and, when a slot has come, takes it and records
the script's run as started in one fenced round trip: a slot runs once, and slots missed
while no node owned the service run once (trigger `missed`), not once per missed tick.
`due` and `due_slots` are pure.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from sqlalchemy import (
    Connection,
    text,
)

from workers.fence.fencing import Fence, fenced_round_trip
from workers.services.app_script.ledger import (
    NONE_RUNNING,
    close_lost_sql,
    close_orphans_sql,
    lock_sql,
    start_sql,
)
from workers.settings import ScriptSettings, Settings, timing
from workers.stores.database import Statement, one_round_trip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    """The latest scheduled time that has passed, and how many slots passed since the last run."""

    at: datetime
    slots: int


CAUGHT_UP = 2
"""An interval script one slot behind takes the older slot, and the newer at the next beat:
a beat that comes a little late (its cycle jitters across a slot's boundary, as a far
owner's does) loses no run. Further behind (no owner for a while), the slots missed
collapse into one run."""


def due(script: ScriptSettings, last_due: datetime, now: datetime) -> Due | None:
    """The slot to run now, if any: pure, from the last slot run and the database time."""
    if script.interval is not None:
        slots = math.floor((now - last_due).total_seconds() / script.interval)
        if slots < 1:
            return None
        if slots == CAUGHT_UP:
            return Due(last_due + timedelta(seconds=script.interval), 1)
        return Due(last_due + timedelta(seconds=slots * script.interval), slots)
    if script.cron is not None:
        schedule = croniter(script.cron, last_due)
        latest, slots = None, 0
        while slots < 10_000:
            following = schedule.get_next(datetime)
            if following > now:
                break
            latest, slots = following, slots + 1
        return Due(latest, slots) if latest is not None else None
    return None


def next_due(script: ScriptSettings, last_due: datetime) -> datetime | None:
    if script.interval is not None:
        return last_due + timedelta(seconds=script.interval)
    if script.cron is not None:
        return croniter(script.cron, last_due).get_next(datetime)  # type: ignore[no-any-return]
    return None


def _now(connection: Connection) -> datetime:
    return connection.execute(text("SELECT clock_timestamp()")).scalar_one()  # type: ignore[no-any-return]


SCHEDULE_SQL = (
    "SELECT json_build_object('now', clock_timestamp(), 'last_due', "
    "(SELECT COALESCE(json_object_agg(script, last_due_at), '{}'::json) FROM script_schedule))"
)


@dataclass(frozen=True)
class Schedules:
    """The database time and each script's last slot run, read in one round trip."""

    now: datetime
    last_due: dict[str, datetime]


def read_schedules(settings: Settings) -> Schedules:
    return _schedules(one_round_trip(settings, SCHEDULE_SQL, {}))


def _schedules(found: object) -> Schedules:
    answer = json.loads(found) if isinstance(found, str) else found
    assert isinstance(answer, dict)
    last_due = {name: datetime.fromisoformat(at) for name, at in answer["last_due"].items()}
    return Schedules(datetime.fromisoformat(answer["now"]), last_due)


SCHEDULES_READ: Statement = (SCHEDULE_SQL, {})
"""The schedules' read, for the owner's service work to send with its ticks (one round trip
for both): `read_at_tick` keeps its answer for this beat's `take_due_runs`."""


_read_at_tick: dict[str, Schedules] = {}


def read_at_tick(incarnation: str, rows: list[tuple[Any, ...]]) -> None:
    """The schedules as the service work's tick read them, for this beat's take only."""
    _read_at_tick[incarnation] = _schedules(rows[0][0])


def due_slots(settings: Settings, schedules: Schedules) -> list[tuple[str, Due]]:
    """Each script whose slot has come, with the slot: pure."""
    return [
        (name, slot)
        for name, script in sorted(settings.scripts.items())
        if name in schedules.last_due
        and (slot := due(script, schedules.last_due[name], schedules.now)) is not None
    ]


def take_due_runs(settings: Settings, fence: Fence) -> list[tuple[str, int]]:
    """On the owner: read the schedules (one round trip, or none when the beat's ticks read
    them: `read_at_tick`); if a slot has come, in one more under the fence, close orphaned
    runs and record each due script's run as started, unless a run of it still runs or
    another took the slot. Returns (script, run id) for each run to execute."""
    schedules = _read_at_tick.pop(fence.me.incarnation, None) or read_schedules(settings)
    new = [name for name in sorted(settings.scripts) if name not in schedules.last_due]
    slots = due_slots(settings, schedules)
    if not new and not slots:
        return []
    statements: list[Statement] = [close_orphans_sql(fence)]
    statements += [_first_slot_sql(name) for name in new]
    takes: list[tuple[str, int]] = []
    for name, slot in slots:
        lost = timing.run_lost_after(settings, settings.script(name).timeout)
        statements += [lock_sql(name), close_lost_sql(name, fence, lost)]
        takes.append((name, len(statements)))
        statements.append(_take_slot_sql(name, slot, schedules, fence, settings.lease_timeout))
    results = fenced_round_trip(settings, fence, statements)
    return [(name, int(results[at][0][0])) for name, at in takes if results[at]]


def _first_slot_sql(name: str) -> Statement:
    """A script seen for the first time: its schedule starts now (its first slot is next)."""
    return (
        "INSERT INTO script_schedule (script, last_due_at) VALUES (:n, clock_timestamp()) "
        "ON CONFLICT (script) DO NOTHING",
        {"n": name},
    )


def _take_slot_sql(
    name: str, slot: Due, schedules: Schedules, fence: Fence, lease: float
) -> Statement:
    """Move the script's schedule to `slot` (if no one did since it was read) and record
    its run as started, unless a run of it still runs: slots missed while no one owned the
    service run once (trigger `missed`)."""
    late = (schedules.now - slot.at).total_seconds() > lease
    trigger = "missed" if slot.slots > 1 or late else "schedule"
    sql, params = start_sql(name, fence, trigger, slot.at, "EXISTS (SELECT 1 FROM slot)")
    return (
        "WITH slot AS (UPDATE script_schedule SET last_due_at = :at "
        f"WHERE script = :n AND last_due_at = :seen AND {NONE_RUNNING} RETURNING script) " + sql,
        {**params, "at": slot.at, "seen": schedules.last_due[name]},
    )
