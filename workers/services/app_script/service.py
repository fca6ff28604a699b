"""The script runner as a `SingletonService`, and the bodies of its Celery tasks.

This is all the node knows of the script runner: the adapter the registry runs at each
beat (it takes the due runs under the fence and starts each at once, in a thread of the
owner's worker), its rows in `failover status`, the pruning of its ledger, and what the
`failover.taken_run`, `failover.scheduled_run` and `failover.run_script` tasks do
(`workers.runtime.tasks` only wraps them for Celery).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from workers.errors import ConfigError, StaleEpoch
from workers.fence import local_fence
from workers.fence.fencing import Fence, reject
from workers.queues.routing import TAKEN_RUN, expired
from workers.services.app_script import ledger
from workers.services.app_script.runner import run_now, run_recorded, run_scheduled
from workers.services.app_script.schedule import (
    SCHEDULES_READ,
    next_due,
    read_at_tick,
    take_due_runs,
)
from workers.services.base import HandOver, Row, Section, Sender
from workers.settings import Settings
from workers.settings.process import Identity
from workers.stores.database import Statement

SERVICE = "app_script"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _script_cells(script: Row) -> tuple[str, ...]:
    last = script["last_run"]
    when = f"{last['started_at']} on {last['node']} ({last['trigger']})" if last else "never"
    result = f"{last['status']} (exit {last['exit_code']})" if last else "-"
    return (
        script["script"],
        script["schedule"] or "on demand",
        when,
        result,
        script["next_due_at"] or "-",
    )


SCRIPTS = Section(
    key="scripts",
    title="Scripts",
    columns=("script", "schedule", "last run", "result", "next due"),
    cells=_script_cells,
    label="script",
)


def script_summaries(connection: Connection, settings: Settings) -> list[Row]:
    """Per script: its schedule, its last run with the result, and the next due time."""
    summaries = []
    for name, script in sorted(settings.scripts.items()):
        last = ledger.last_run(connection, name)
        last_due = connection.execute(
            text("SELECT last_due_at FROM script_schedule WHERE script = :n"), {"n": name}
        ).scalar()
        upcoming = next_due(script, last_due) if last_due else None
        summaries.append(
            {
                "script": name,
                "schedule": f"every {script.interval:g} s" if script.interval else script.cron,
                "last_run": None
                if last is None
                else {
                    "node": last.node,
                    "epoch": last.epoch,
                    "trigger": last.trigger,
                    "status": last.status,
                    "exit_code": last.exit_code,
                    "started_at": _iso(last.started_at),
                    "finished_at": _iso(last.finished_at),
                },
                "next_due_at": _iso(upcoming),
            }
        )
    return summaries


def check_scripts(settings: Settings) -> None:
    """At node start: each script's program and working folder exist (one line if not)."""
    for name, script in settings.scripts.items():
        if shutil.which(script.argv[0]) is None:
            raise ConfigError(f"script {name}: {script.argv[0]} is not an executable program")
        if script.cwd is not None and not script.cwd.is_dir():
            raise ConfigError(f"script {name}: cwd {script.cwd} is not a directory")


class AppScriptService:
    """`app_script`: allow-listed scripts on a schedule, each slot run once, or on demand."""

    name = SERVICE
    section: Section | None = SCRIPTS

    def configured(self, settings: Settings) -> bool:
        return bool(settings.scripts)

    def check(self, settings: Settings) -> None:
        check_scripts(settings)

    def adopt(self, settings: Settings, fence: Fence) -> None:
        """Part of `take_due_runs`: it closes the previous owner's orphaned runs."""

    def work(self, settings: Settings, fence: Fence, send: Sender) -> Any:
        if not settings.scripts:
            return None
        runs = take_due_runs(settings, fence)
        for name, run_id in runs:
            send.here(TAKEN_RUN, (name, run_id, fence.epoch))
        return [name for name, _ in runs]

    def status(self, connection: Connection, settings: Settings) -> list[Row]:
        return script_summaries(connection, settings)

    def in_flight(self, connection: Connection, settings: Settings) -> list[str] | None:
        return ledger.in_flight(connection)

    def busy_here(self, settings: Settings, incarnation: str) -> bool:
        """Every run is recorded in the database before it starts."""
        return False

    def prune(self, connection: Connection, settings: Settings, days: float, limit: int) -> int:
        """Runs that ended more than `days` days ago (running ones stay)."""
        return ledger.prune(connection, days, limit)

    def tick_read(self, settings: Settings) -> Statement | None:
        """The schedules, read with the ticks (a far owner saves a round trip a beat)."""
        return SCHEDULES_READ if settings.scripts else None

    def read_at_tick(self, incarnation: str, rows: list[tuple[Any, ...]]) -> None:
        read_at_tick(incarnation, rows)


def scheduled_run(
    settings: Settings, me: Identity, name: str, run_id: int, epoch: int, hand_over: HandOver
) -> str:
    """`failover.scheduled_run`: execute a scheduled run whose start the service work
    recorded under the fence (sent by a node of the previous release)."""
    fence = Fence(SERVICE, me, epoch)
    try:
        result = run_scheduled(settings, name, fence, run_id)
    except StaleEpoch as stale:
        reject(settings, fence, stale)
        return "rejected"
    after_run(settings, fence, hand_over)
    return result.status if result else "closed before it started"


def taken_run(
    settings: Settings, me: Identity, name: str, run_id: int, epoch: int, hand_over: HandOver
) -> str:
    """`failover.taken_run`: execute a run that the service work recorded as started under
    the fence a moment ago (`Sender.here`): no second check before it starts, no message."""
    fence = Fence(SERVICE, me, epoch)
    result = run_recorded(settings, name, fence, run_id)
    after_run(settings, fence, hand_over)
    return result.status


def run_on_demand(
    settings: Settings, me: Identity, name: str, epoch: int, hand_over: HandOver
) -> dict[str, Any]:
    """`failover.run_script`: an on-demand run of an allow-listed script, refused before it
    starts if stale."""
    if expired(settings, me):
        return {"run": None, "status": "refused", "exit_code": None, "output_tail": "expired"}
    fence = Fence(SERVICE, me, epoch)
    try:
        outcome = run_now(settings, name, fence)
    except StaleEpoch as refusal:
        reject(settings, fence, refusal)
        return {"run": None, "status": "refused", "exit_code": None, "output_tail": str(refusal)}
    after_run(settings, fence, hand_over)
    return outcome


def after_run(settings: Settings, fence: Fence, hand_over: HandOver) -> None:
    """A run ended: if the service is handing over, hand it over if that was the last one."""
    if local_fence.handing_over(fence.me.incarnation, fence.service):
        hand_over(settings, fence)
