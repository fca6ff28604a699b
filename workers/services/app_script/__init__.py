"""The application-script runner: allow-listed scripts, on a schedule or on demand, on the owner.

Only scripts declared in the settings can run: a task carries a script's name, never a
command. A run is recorded in `script_run` (fenced by the owner's epoch) before it starts,
so a stale owner's run is refused before anything happens. Its whole process group is
killed at its timeout. A scheduled slot runs once: the slot is taken in the same
transaction that records the run; slots missed while no node owned the service run once
(trigger `missed`), not once per missed tick.

The modules, one job each: `ledger` (the `script_run` table and every statement on it),
`schedule` (the slots, and taking a due one), `runner` (running a script, recording its
start and end), `service` (the `SingletonService` and the bodies of its Celery tasks).
"""

from workers.services.app_script.ledger import in_flight, recent_runs, run_count
from workers.services.app_script.runner import run_now, run_recorded, run_scheduled
from workers.services.app_script.schedule import SCHEDULES_READ, read_at_tick, take_due_runs
from workers.services.app_script.service import (
    SCRIPTS,
    SERVICE,
    AppScriptService,
    check_scripts,
    run_on_demand,
    scheduled_run,
    taken_run,
)

__all__ = [
    "SCHEDULES_READ",
    "SCRIPTS",
    "SERVICE",
    "AppScriptService",
    "check_scripts",
    "in_flight",
    "read_at_tick",
    "recent_runs",
    "run_count",
    "run_now",
    "run_on_demand",
    "run_recorded",
    "run_scheduled",
    "scheduled_run",
    "take_due_runs",
    "taken_run",
]
