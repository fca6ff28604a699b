"""The script runner's ledger: the `script_run` table and every statement on it.

A run is a row: recorded as `running` (under the owner's epoch, with its incarnation)
before it starts, and ended by the incarnation that ran it (`end_sql`), or closed by a new
owner once that incarnation is gone (`close_orphans_sql`), or by its own incarnation once
its end is overdue (`close_lost_sql`: its message or process was lost). The statements are
built here, as (SQL, parameters), so that the owner sends them in one fenced round trip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    text,
)

from workers.fence.fencing import Fence
from workers.settings.process import Identity
from workers.stores.database import Statement
from workers.stores.retention import LIMIT, prune_rows
from workers.stores.store import gone_incarnation, own_work_lost
from workers.stores.tables import metadata

log = logging.getLogger(__name__)

script_run = Table(
    "script_run",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("script", String(63), nullable=False),
    Column("node", String(63), nullable=False),
    Column("incarnation", Uuid),
    Column("epoch", BigInteger, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("due_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),
    Column("exit_code", Integer),
    Column("output_tail", Text),
)

ORPHANED_RUN = "(its node stopped during the run)"
LOST_RUN = "(no end was recorded within its timeout and a lease: its message or process was lost)"


@dataclass(frozen=True)
class RunResult:
    status: str
    exit_code: int | None
    output_tail: str
    killed_for: str | None = None


def lock_sql(name: str) -> Statement:
    """A script's slot and its runs are taken one at a time (scheduled and on demand)."""
    return (
        "SELECT pg_advisory_xact_lock(hashtext('app_script:' || CAST(:n AS text)))",
        {"n": name},
    )


def close_lost_sql(name: str, fence: Fence, lost_after: float) -> Statement:
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


def running(connection: Connection, name: str, fence: Fence, lost_after: float) -> bool:
    """Whether a run of the script may still be running, after closing this incarnation's
    lost runs (`close_lost_sql`)."""
    sql, params = close_lost_sql(name, fence, lost_after)
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
    sql, params = start_sql(name, fence, trigger, due_at)
    return int(connection.execute(text(sql), params).scalar_one())


def start_sql(
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
    sql, params = close_orphans_sql(fence)
    connection.execute(text(sql), params)


def close_orphans_sql(fence: Fence) -> Statement:
    return (
        "UPDATE script_run AS s SET status = 'failed', finished_at = clock_timestamp(), "
        "output_tail = coalesce(output_tail, '') || :why "
        "WHERE s.status = 'running' AND s.incarnation IS DISTINCT FROM CAST(:me AS uuid) "
        f"AND {gone_incarnation('s.incarnation')}",
        {"me": fence.me.incarnation, "why": ORPHANED_RUN},
    )


def record_end(connection: Connection, run_id: int, result: RunResult, me: Identity) -> bool:
    """Record a run's end, fenced by its own row: only the incarnation that ran it, while
    the row is still open (another owner closes it only once this one's lease ran out)."""
    sql, params = end_sql(run_id, result, me)
    return bool(connection.execute(text(sql), params).rowcount)


def end_sql(run_id: int, result: RunResult, me: Identity) -> Statement:
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


def starting_sql(run_id: int, fence: Fence) -> Statement:
    """A recorded run starts now, if it is still open and this node's at the fence's epoch."""
    return (
        "UPDATE script_run SET started_at = clock_timestamp() WHERE id = :id "
        "AND status = 'running' AND epoch = :epoch AND incarnation = :me RETURNING id",
        {"id": run_id, "epoch": fence.epoch, "me": fence.me.incarnation},
    )


def last_run(connection: Connection, name: str) -> Any:
    """The latest run of script `name` (its row), or None."""
    return connection.execute(
        text("SELECT * FROM script_run WHERE script = :n ORDER BY id DESC LIMIT 1"), {"n": name}
    ).first()


def recent_runs(connection: Connection, limit: int) -> list[dict[str, Any]]:
    """The scripts' latest runs, newest first (without their output, which may hold secrets)."""
    rows = connection.execute(
        text(
            "SELECT id, script, node, epoch, trigger, status, exit_code, started_at, finished_at,"
            " extract(epoch FROM finished_at - started_at) AS took_s"
            " FROM script_run ORDER BY id DESC LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [
        {
            "script": row.script,
            "node": row.node,
            "epoch": row.epoch,
            "trigger": row.trigger,
            "status": row.status,
            "exit_code": row.exit_code,
            "started_at": row.started_at.isoformat(),
            "took_s": None if row.took_s is None else round(float(row.took_s), 2),
        }
        for row in rows
    ]


def run_count(connection: Connection) -> int:
    """How many runs the ledger holds (the demo's account)."""
    return int(connection.execute(text("SELECT count(*) FROM script_run")).scalar_one())


def prune(connection: Connection, days: float, limit: int = LIMIT) -> int:
    """Delete up to `limit` script runs that ended more than `days` days ago."""
    return prune_rows(connection, "script_run", "status <> 'running'", "finished_at", days, limit)
