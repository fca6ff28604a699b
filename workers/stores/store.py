"""SQL that reads the cluster snapshot: the heartbeat's one statement, and the rules of
leases (`failover_lease_holds`, `failover_incarnation_gone`) as the nodes' statements use them.

Times are the database's own (`clock_timestamp()`, which, unlike `now()`, moves on after
a lock wait). Changes of owner are in `ownership.py`, a node's own row in `registration.py`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, literal_column, select

from workers.decision.decide import MarkInactive
from workers.decision.snapshot import Node, Service, Snapshot
from workers.settings import Settings
from workers.settings.process import Identity
from workers.stores.database import HEARTBEAT as HEARTBEAT_ENGINE
from workers.stores.database import encrypted, one_round_trip
from workers.stores.tables import server_registry as nodes_t
from workers.stores.tables import service_status as services_t

NOW = func.clock_timestamp()


JUDGE = (
    "(SELECT lease_started_at FROM server_registry AS judge WHERE judge.incarnation = :me "
    "AND failover_lease_holds(judge))"
)
"""SQL: the start of this incarnation's judging window while its own lease holds, else NULL
(`:me` bound to this incarnation): what a takeover requires of the node that judges."""


def gone_incarnation(column: str) -> str:
    """SQL: the incarnation in `column` is gone by the takeover rule (invariants 3 and 4):
    this incarnation's own lease holds, and the other's lease ran out after this one's
    judging window opened. Until then its work on files and scripts is still its own,
    stopped or not, whatever a promoted standby's clock or a lost renewal says."""
    return f"failover_incarnation_gone({column}, CAST(:me AS uuid))"


def own_work_lost(since: str, seconds: str) -> str:
    """SQL: this incarnation's own work that began at `since` has had `seconds` (a bound
    parameter) to end, counted, as a takeover would, from when its own lease last began to
    hold (a lost renewal or a promoted standby's clock does not make its work look old)."""
    return (
        f"({JUDGE} IS NOT NULL AND greatest({since}, {JUDGE}) "
        f"+ make_interval(secs => {seconds}) < clock_timestamp())"
    )


LEASE_EXPIRES = nodes_t.c.last_heartbeat_at + nodes_t.c.lease_timeout_s * literal_column(
    "interval '1 second'"
)


def database_now(connection: Connection) -> datetime:
    return connection.execute(select(NOW)).scalar_one()  # type: ignore[no-any-return]


def node_from_row(row: Mapping[Any, Any]) -> Node:
    """A registry row, read by SQLAlchemy or returned as JSON by `failover_heartbeat`."""
    return Node(
        id=row["id"],
        name=row["node_name"],
        region=row["region"],
        is_active=row["is_active"],
        last_heartbeat_at=_time(row["last_heartbeat_at"]),
        lease_started_at=_time(row["lease_started_at"]),
        lease_timeout=row["lease_timeout_s"],
        draining=row["draining"],
        stopped_at=_maybe_time(row["stopped_at"]),
        incarnation=str(row["incarnation"]),
        app_healthy=row["app_healthy"],
        last_verdict=row["last_verdict"],
        drain_grace=row.get("drain_grace_s"),
        joining_until=_maybe_time(row.get("joining_until")),
    )


def service_from_row(row: Mapping[Any, Any]) -> Service:
    """A `service_status` row, read by SQLAlchemy or returned as JSON."""
    return Service(
        name=row["service_type"],
        owner_id=row["service_registry_id"],
        epoch=row["epoch"],
        acquired_at=_maybe_time(row["acquired_at"]),
        reason=row["acquired_reason"],
        home_region=row["home_region"],
        handover_to=row.get("handover_to"),
        handover_since=_maybe_time(row.get("handover_since")),
        handover_until=_maybe_time(row.get("handover_until")),
        handover_reason=row.get("handover_reason"),
    )


def _time(value: datetime | str) -> datetime:
    """A timestamp as SQLAlchemy gives it, or as PostgreSQL writes it in JSON (ISO 8601)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _maybe_time(value: datetime | str | None) -> datetime | None:
    return None if value is None else _time(value)


def read_nodes(connection: Connection) -> tuple[Node, ...]:
    rows = connection.execute(select(nodes_t).order_by(nodes_t.c.node_name))
    return tuple(node_from_row(row._mapping) for row in rows)


@dataclass(frozen=True)
class Latency:
    """What a node measured of its distance to the stores, in milliseconds (None: unknown)."""

    db_round_trip_ms: float | None = None
    broker_round_trip_ms: float | None = None
    heartbeat_cycle_ms: float | None = None


ASYNC_COMMIT = "SET LOCAL synchronous_commit = off; "
"""A heartbeat does not wait for its renewal to reach the disk (or a synchronous standby):
a renewal lost in a crash or a failover only makes the lease look older than it is, which
the outage rule already makes safe, and no decision is taken on a renewal alone (changes
of owner and fenced work commit in transactions of their own). Saves a WAL flush per beat.
"""

HEARTBEAT_SQL = ASYNC_COMMIT + (
    "SELECT failover_heartbeat(%(node)s, %(incarnation)s, %(healthy)s, "
    "%(db)s::real, %(broker)s::real, %(cycle)s::real, %(everyone)s, %(broker_server)s::text, "
    "%(database_encrypted)s::boolean, %(broker_encrypted)s::boolean)"
)


def heartbeat(
    settings: Settings,
    me: Identity,
    healthy: bool,
    latency: Latency,
    broker_server: str | None = None,
    broker_encrypted: bool | None = None,
) -> Snapshot | None:
    """One heartbeat's database work in one round trip: renew (if healthy) and read. The
    database records which server answered; `broker_server` is the broker the beat reached,
    and the node says whether its connections to both stores are encrypted.

    Returns the snapshot to decide on, or None when this incarnation is stopped or replaced.
    """
    params = {
        "node": me.name,
        "incarnation": uuid.UUID(me.incarnation),
        "healthy": healthy,
        "db": latency.db_round_trip_ms,
        "broker": latency.broker_round_trip_ms,
        "cycle": latency.heartbeat_cycle_ms,
        "everyone": settings.policy().any_failback(),
        "broker_server": broker_server,
        "database_encrypted": encrypted(settings.require_database_url()),
        "broker_encrypted": broker_encrypted,
    }
    found = one_round_trip(settings, HEARTBEAT_SQL, params, HEARTBEAT_ENGINE)
    answer = json.loads(found) if isinstance(found, str) else found
    if not isinstance(answer, dict) or not answer["renewed"]:
        return None
    return snapshot_from_json(answer)


def snapshot_from_json(answer: dict[str, Any]) -> Snapshot:
    """The snapshot `failover_heartbeat` returns, as the decision code sees it."""
    nodes = tuple(node_from_row(row) for row in answer["nodes"])
    services = tuple(service_from_row(row) for row in answer["services"])
    return Snapshot(_time(answer["now"]), nodes, services, complete=bool(answer["complete"]))


APPLY_SQL = """
WITH dead AS (
    SELECT r.id FROM server_registry AS r
    JOIN json_to_recordset(%(marks)s::json) AS m(node TEXT, last_heartbeat_at TIMESTAMPTZ)
        ON r.node_name = m.node AND r.last_heartbeat_at = m.last_heartbeat_at
    WHERE r.is_active
    FOR UPDATE OF r SKIP LOCKED
), marked AS (
    UPDATE server_registry AS s SET is_active = false FROM dead WHERE s.id = dead.id
    RETURNING s.node_name
), verdict AS (
    UPDATE server_registry SET last_verdict = %(verdict)s
    WHERE node_name = %(node)s AND incarnation = %(incarnation)s AND stopped_at IS NULL
)
SELECT COALESCE(json_agg(node_name), '[]'::json) FROM marked
"""


def apply_marks_and_verdict(
    settings: Settings, me: Identity, marks: list[MarkInactive], verdict: str
) -> list[str]:
    """Mark dead peers inactive (unless they renewed since) and store the verdict, in one
    round trip; returns the names actually marked. A peer another judge is marking right now
    is skipped, not waited for: in a large cluster many see the same dead node."""
    params = {
        "marks": json.dumps(
            [{"node": m.node, "last_heartbeat_at": m.last_heartbeat_at.isoformat()} for m in marks]
        ),
        "verdict": verdict,
        "node": me.name,
        "incarnation": uuid.UUID(me.incarnation),
    }
    found = one_round_trip(settings, APPLY_SQL, params, HEARTBEAT_ENGINE)
    marked = json.loads(found) if isinstance(found, str) else found
    return [str(name) for name in marked] if isinstance(marked, list) else []


def read_snapshot(connection: Connection) -> Snapshot:
    """The whole registry and every service, with the database time after reading them."""
    nodes = read_nodes(connection)
    services = connection.execute(select(services_t).order_by(services_t.c.service_type))
    return Snapshot(
        database_now(connection), nodes, tuple(service_from_row(row._mapping) for row in services)
    )
