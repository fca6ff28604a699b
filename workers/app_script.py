"""The application-script runner: allow-listed scripts, on a schedule or on demand, on the owner.

Only scripts declared in the settings can run: a task carries a script's name, never a
command. A run is recorded in `script_run` (fenced by the owner's epoch) before it starts,
so a stale owner's run is refused before anything happens. Its whole process group is
killed at its timeout. A scheduled slot runs once: the slot is taken in the same
transaction that records the run; slots missed while no node owned the service run once
(trigger `missed`), not once per missed tick.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from sqlalchemy import Connection, text

from workers.fence import local_fence, local_state
from workers.fence.children import child_environment
from workers.fence.fencing import Fence, fenced_round_trip, persistently, reject
from workers.fence.supervision import Watch, die_with_parent, end_subtree, guarded, supervise
from workers.settings import ScriptSettings, Settings
from workers.settings.process import Identity
from workers.stores.database import Statement, one_round_trip
from workers.stores.store import gone_incarnation, own_work_lost

log = logging.getLogger(__name__)
SERVICE = "app_script"
ORPHANED_RUN = "(its node stopped during the run)"
LOST_RUN = "(no end was recorded within its timeout and a lease: its message or process was lost)"


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


def _lock_sql(name: str) -> Statement:
    """A script's slot and its runs are taken one at a time (scheduled and on demand)."""
    return (
        "SELECT pg_advisory_xact_lock(hashtext('app_script:' || CAST(:n AS text)))",
        {"n": name},
    )


def _close_lost_sql(name: str, fence: Fence, lost_after: float) -> Statement:
    """A run of this incarnation with no end after its timeout and a lease was lost (its
    message, or a killed pool process): closed, so the script runs again."""
    return (
        "UPDATE script_run SET status = 'failed', finished_at = clock_timestamp(), "
        "output_tail = coalesce(output_tail, '') || :why "
        "WHERE script = :n AND status = 'running' AND incarnation = :me "
        f"AND {own_work_lost('started_at', ':lost')}",
        {"n": name, "me": fence.me.incarnation, "lost": lost_after, "why": LOST_RUN},
    )


NONE_RUNNING = "NOT EXISTS (SELECT 1 FROM script_run WHERE script = :n AND status = 'running')"
"""No run of the script may still be running (on this node, or on a previous owner that has
not said it is done and whose lease holds)."""


def _running(connection: Connection, name: str, fence: Fence, lost_after: float) -> bool:
    """Whether a run of the script may still be running, after closing this incarnation's
    lost runs (`_close_lost_sql`)."""
    sql, params = _close_lost_sql(name, fence, lost_after)
    connection.execute(text(sql), params)
    return not connection.execute(text(f"SELECT {NONE_RUNNING}"), {"n": name}).scalar_one()


def in_flight(connection: Connection) -> list[str]:
    """Runs recorded as started and not ended (on any node): what a planned handover waits
    for."""
    rows = connection.execute(
        text(
            "SELECT script || ' (run ' || id || ')' FROM script_run "
            "WHERE status = 'running' ORDER BY id"
        )
    ).scalars()
    return list(rows)


def record_start(
    connection: Connection, name: str, fence: Fence, trigger: str, due_at: datetime | None
) -> int:
    sql, params = _start_sql(name, fence, trigger, due_at)
    return int(connection.execute(text(sql), params).scalar_one())


def _start_sql(
    name: str, fence: Fence, trigger: str, due_at: datetime | None, when: str = "true"
) -> Statement:
    """Record a run of `name` as started (if `when` holds); returns its id."""
    return (
        "INSERT INTO script_run (script, node, incarnation, epoch, trigger, due_at, status) "
        "SELECT :n, :node, CAST(:incarnation AS uuid), :epoch, :trigger, "
        f"CAST(:due AS timestamptz), 'running' WHERE {when} RETURNING id",
        {
            "n": name,
            "node": fence.me.name,
            "incarnation": fence.me.incarnation,
            "epoch": fence.epoch,
            "trigger": trigger,
            "due": due_at,
        },
    )


def close_orphans(connection: Connection, fence: Fence) -> None:
    """Runs left 'running' by another incarnation whose lease has run out ended with it: say
    so in the ledger. Those of a live one are left alone: it kills or finishes them, and
    records their end itself (a planned handover)."""
    sql, params = _close_orphans_sql(fence)
    connection.execute(text(sql), params)


def _close_orphans_sql(fence: Fence) -> Statement:
    return (
        "UPDATE script_run AS s SET status = 'failed', finished_at = clock_timestamp(), "
        "output_tail = coalesce(output_tail, '') || :why "
        "WHERE s.status = 'running' AND s.incarnation IS DISTINCT FROM CAST(:me AS uuid) "
        f"AND {gone_incarnation('s.incarnation')}",
        {"me": fence.me.incarnation, "why": ORPHANED_RUN},
    )


@dataclass(frozen=True)
class RunResult:
    status: str
    exit_code: int | None
    output_tail: str
    killed_for: str | None = None


def execute(
    script: ScriptSettings, lines: int, fence: Fence | None = None, passthrough: Sequence[str] = ()
) -> RunResult:
    """Run the script's argv (no shell) below a guard (`supervision.guarded`), with only the
    environment a child gets (`workers.fence.children`): it and all it started are killed at the
    timeout, as soon as the node may no longer act for the service (`fence`), when the
    node's worker dies, and when the script ends."""
    what = f"script {' '.join(script.argv)[:80]}"

    def in_guard(watch: Watch) -> dict[str, Any]:
        return asdict(_run_in_guard(script, lines, fence, passthrough, what, watch))

    result = guarded(in_guard, what)
    if result is None:
        return RunResult("killed", None, "(killed: its guard process died)", "its guard died")
    return RunResult(**result)


ALIVE_HERE = "(not started: a run of this script is still alive on this node)"


def _alone_on_node(fence: Fence, script: ScriptSettings) -> bool:
    """Hold, for the life of this guard, the node's lock on the script (by its argv): False
    if an earlier run of it still lives here. The database may have lost that run's record
    (a standby promoted without its last writes); the host has not."""
    slot = int.from_bytes(hashlib.sha256("\0".join(script.argv).encode()).digest()[:7], "big")
    return bool(local_state.hold_slots(fence.me.incarnation, "scripts", [slot]))


def _run_in_guard(
    script: ScriptSettings,
    lines: int,
    fence: Fence | None,
    passthrough: Sequence[str],
    what: str,
    watch: Watch,
) -> RunResult:
    """In the guard: start the script, keep the tail of its output, stop it in time."""
    started = time.monotonic()
    guard = os.getpid()
    if fence is not None and not _alone_on_node(fence, script):
        return RunResult("failed", None, ALIVE_HERE)
    try:
        process = subprocess.Popen(
            script.argv,
            cwd=script.cwd,
            env=child_environment(script.env, passthrough),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            preexec_fn=lambda: die_with_parent(guard),
        )
    except OSError as error:
        return RunResult("failed", None, f"could not start: {error}")
    tail: deque[str] = deque(maxlen=lines)
    reader = threading.Thread(target=lambda: tail.extend(process.stdout or []), daemon=True)
    reader.start()
    ending = supervise(process, what, fence, lambda: started + script.timeout, watch=watch)
    end_subtree()
    reader.join(timeout=2)
    output = "".join(tail)[-8000:]
    if ending.killed_for:
        why = ending.killed_for
        return RunResult("killed", ending.code, f"{output}(killed: {why})", why)
    if ending.timed_out:
        return RunResult("timeout", ending.code, output)
    return RunResult("succeeded" if ending.code == 0 else "failed", ending.code, output)


def record_end(connection: Connection, run_id: int, result: RunResult, me: Identity) -> bool:
    """Record a run's end, fenced by its own row: only the incarnation that ran it, while
    the row is still open (another owner closes it only once this one's lease ran out)."""
    sql, params = _end_sql(run_id, result, me)
    return bool(connection.execute(text(sql), params).rowcount)


def _end_sql(run_id: int, result: RunResult, me: Identity) -> Statement:
    return (
        "UPDATE script_run SET status = :status, exit_code = :code, output_tail = :tail, "
        "finished_at = clock_timestamp() "
        "WHERE id = :id AND status = 'running' AND incarnation = :me RETURNING id",
        {
            "id": run_id,
            "status": result.status,
            "code": result.exit_code,
            "tail": result.output_tail,
            "me": me.incarnation,
        },
    )


def run_scheduled(settings: Settings, name: str, fence: Fence, run_id: int) -> RunResult | None:
    """Execute a run the owner's service work recorded, only if this node still owns the
    service at that epoch (checked under the fence just before it starts, in one round trip;
    `StaleEpoch` otherwise) and the run was not closed meanwhile (None then)."""
    (still,) = fenced_round_trip(
        settings,
        fence,
        [
            (
                "UPDATE script_run SET started_at = clock_timestamp() WHERE id = :id "
                "AND status = 'running' AND epoch = :epoch AND incarnation = :me RETURNING id",
                {"id": run_id, "epoch": fence.epoch, "me": fence.me.incarnation},
            )
        ],
    )
    return run_recorded(settings, name, fence, run_id) if still else None


def run_recorded(settings: Settings, name: str, fence: Fence, run_id: int) -> RunResult:
    """Execute a run whose start is already recorded, and record its end whatever happens
    (one round trip, tried again while the database is unavailable)."""
    script = settings.script(name)
    log.warning(
        "node %s: running script %s (run %d) at epoch %d", fence.me.name, name, run_id, fence.epoch
    )
    try:
        result = execute(
            script, settings.script_output_lines, fence, settings.child_env_passthrough
        )
    except Exception as error:
        result = RunResult("failed", None, f"{type(error).__name__}: {error}")
    (recorded,) = persistently(settings, fence.me, [_end_sql(run_id, result, fence.me)])
    log.warning(
        "node %s: script %s (run %d) %s, exit code %s%s",
        fence.me.name,
        name,
        run_id,
        result.status,
        result.exit_code,
        ""
        if result.status != "killed"
        else f": {result.output_tail.rsplit('(killed: ', 1)[-1][:-1]}",
    )
    if not recorded:
        reject(settings, fence, f"the end of run {run_id} of {name}: another owner closed it")
    return result


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
    statements: list[Statement] = [_close_orphans_sql(fence)]
    statements += [_first_slot_sql(name) for name in new]
    takes: list[tuple[str, int]] = []
    for name, slot in slots:
        lost = settings.script(name).timeout + settings.lease_timeout
        statements += [_lock_sql(name), _close_lost_sql(name, fence, lost)]
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
    sql, params = _start_sql(name, fence, trigger, slot.at, "EXISTS (SELECT 1 FROM slot)")
    return (
        "WITH slot AS (UPDATE script_schedule SET last_due_at = :at "
        f"WHERE script = :n AND last_due_at = :seen AND {NONE_RUNNING} RETURNING script) " + sql,
        {**params, "at": slot.at, "seen": schedules.last_due[name]},
    )


def run_now(settings: Settings, name: str, fence: Fence) -> dict[str, Any]:
    """An on-demand run (trigger `manual`), refused before it starts if the fence fails or a
    run of the script is in progress: its start in one round trip, its end in one more."""
    script = settings.script(name)
    left = local_fence.holding_off(settings)
    if left:
        why = f"its database connection broke: no new work for {left:.1f} s"
        return {"run": None, "status": "refused", "exit_code": None, "output_tail": why}
    lost = script.timeout + settings.lease_timeout
    *_, started = fenced_round_trip(
        settings,
        fence.to_start(),
        [
            _lock_sql(name),
            _close_lost_sql(name, fence, lost),
            _start_sql(name, fence, "manual", None, NONE_RUNNING),
        ],
    )
    if not started:
        why = f"a run of {name} is still in progress (see failover history)"
        return {"run": None, "status": "refused", "exit_code": None, "output_tail": why}
    run_id = int(started[0][0])
    result = run_recorded(settings, name, fence, run_id)
    return {
        "run": run_id,
        "status": result.status,
        "exit_code": result.exit_code,
        "output_tail": result.output_tail,
    }


def check_scripts(settings: Settings) -> None:
    """At node start: each script's program and working folder exist (one line if not)."""
    import shutil

    from workers.errors import ConfigError

    for name, script in settings.scripts.items():
        if shutil.which(script.argv[0]) is None:
            raise ConfigError(f"script {name}: {script.argv[0]} is not an executable program")
        if script.cwd is not None and not script.cwd.is_dir():
            raise ConfigError(f"script {name}: cwd {script.cwd} is not a directory")
