"""Retention: finished rows older than `ledger_retention_days` go, a bounded batch at a time.

A service's ledger (a row per file, per run) and the node events the ownership timeline
draws (`node_event`) grow forever otherwise. `prune_rows` deletes at most `limit` rows per
call, oldest first, so one call never holds its locks for long (a backlog is worked off a
batch at a time), and skips rows another pruner holds. Each service prunes its own ledger
through it (`SingletonService`'s optional `KeepsLedger`); the registry prunes the node
events beside it, and calls both on the owner about once an hour. `ownership_history` is
kept whole.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

LIMIT = 10_000


def prune_rows(
    connection: Connection, table: str, ended: str, at: str, days: float, limit: int
) -> int:
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


def prune_node_events(connection: Connection, days: float, limit: int = LIMIT) -> int:
    """Delete up to `limit` node events (starts, stops, expiries, drains) older than `days`."""
    return prune_rows(connection, "node_event", "true", "at", days, limit)
