"""Retention of the services' ledgers: finished rows older than `ledger_retention_days` go.

`folder_file` and `script_run` gain a row per file and per run forever otherwise. The owner
of each service prunes its own ledger from its service work, at most once an hour per node
(`prune_due`, a monotonic throttle in the incarnation's local state), and at most `limit`
rows per table per call, so one call never holds its locks for long; a backlog is worked
off an hour at a time. Rows still in flight (a file waiting or in processing, a script
running) are never touched, and `ownership_history` is kept whole. The node events the
ownership timeline draws (`node_event`) go with the same retention, pruned by whichever owner
prunes first (any service's owner; a second prune that hour finds nothing).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Connection, text

from workers.fence import local_state
from workers.fence.fencing import Fence
from workers.settings import Settings
from workers.stores.database import transaction

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0
LIMIT = 10_000
FINISHED_FILES = "('processed', 'failed', 'refused')"
SERVICE_LEDGERS = {"folder_monitor": "folder_file", "app_script": "script_run"}


def prune_due(incarnation: str, service: str, every: float = PRUNE_EVERY) -> bool:
    """Whether this node should prune `service`'s ledger now; if so, the next is `every` s away."""
    key = f"pruned.{service}"
    last = local_state.recall(incarnation, key)
    now = time.monotonic()
    if last is not None and now - last < every:
        return False
    local_state.remember(incarnation, key, now)
    return True


def _prune(connection: Connection, table: str, ended: str, at: str, days: float, limit: int) -> int:
    """Delete up to `limit` rows of `table` that are over (`ended`) and whose `at` is more
    than `days` days ago, oldest first, skipping rows another pruner holds."""
    deleted = connection.execute(
        text(
            f"DELETE FROM {table} WHERE id IN ("
            f" SELECT id FROM {table} WHERE {ended}"
            f" AND {at} < clock_timestamp() - :days * interval '1 day'"
            f" ORDER BY {at} LIMIT :limit FOR UPDATE SKIP LOCKED)"
        ),
        {"days": days, "limit": limit},
    )
    return int(deleted.rowcount)


def prune_folder_files(connection: Connection, days: float, limit: int = LIMIT) -> int:
    """Delete up to `limit` files processed, failed or refused more than `days` days ago."""
    ended = f"state IN {FINISHED_FILES}"
    return _prune(connection, "folder_file", ended, "finished_at", days, limit)


def prune_script_runs(connection: Connection, days: float, limit: int = LIMIT) -> int:
    """Delete up to `limit` script runs that ended more than `days` days ago."""
    return _prune(connection, "script_run", "status <> 'running'", "finished_at", days, limit)


def prune_node_events(connection: Connection, days: float, limit: int = LIMIT) -> int:
    """Delete up to `limit` node events (starts, stops, expiries, drains) older than `days`."""
    return _prune(connection, "node_event", "true", "at", days, limit)


def prune_ledger(connection: Connection, service: str, days: float, limit: int = LIMIT) -> int:
    """Prune the ledger of built-in `service` (none for another service); rows deleted."""
    table = SERVICE_LEDGERS.get(service)
    if table == "folder_file":
        return prune_folder_files(connection, days, limit)
    if table == "script_run":
        return prune_script_runs(connection, days, limit)
    return 0


def prune_when_due(settings: Settings, fence: Fence) -> int:
    """On the owner, about once an hour: delete its service's finished ledger rows older than
    `ledger_retention_days` (no fence needed: nobody acts on finished rows); rows deleted."""
    if not prune_due(fence.me.incarnation, fence.service):
        return 0
    with transaction(settings) as connection:
        deleted = prune_ledger(connection, fence.service, settings.ledger_retention_days)
        deleted += prune_node_events(connection, settings.ledger_retention_days)
    if deleted:
        log.info(
            "node %s: deleted %d finished %s ledger rows older than %g days",
            fence.me.name, deleted, fence.service, settings.ledger_retention_days,
        )  # fmt: skip
    return deleted
