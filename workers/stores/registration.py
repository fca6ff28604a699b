"""A node's own row: registering a process under the node's name (refused while another
live or joining process holds it), holding it while joining, draining, and its counters."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, update

from workers.errors import Refused
from workers.settings import Settings
from workers.settings.process import Identity
from workers.stores.database import one_round_trip, transaction
from workers.stores.store import LEASE_EXPIRES, NOW
from workers.stores.tables import server_registry as nodes_t


@dataclass(frozen=True)
class Registration:
    """What a node declares about itself when it starts."""

    name: str
    region: str
    lease_timeout: float
    heartbeat_interval: float
    ip_address: str | None = None
    port_number: str | None = None
    app_context: str | None = None
    hostname: str | None = None
    pid: int | None = None
    retention_days: float = 7.0


HOLDS_NAME = (
    "({t}.is_active AND failover_lease_holds({t})) "
    "OR ({t}.stopped_at IS NULL AND COALESCE({t}.joining_until > clock_timestamp(), false))"
)
"""SQL: the row's process holds the node's name: it is live, or still joining (starting up,
not yet live) within the hold its starting process keeps pushing forward."""

JOINING_VERDICT = "joining: not live until its first heartbeat through its consumer"


def name_holder(connection: Connection, name: str, lock: bool = False) -> str | None:
    """Why the name cannot be registered now (a live or joining process holds it), or None."""
    query = select(
        nodes_t,
        (LEASE_EXPIRES - NOW).label("left"),
        (nodes_t.c.joining_until - NOW).label("joining_left"),
    ).where(nodes_t.c.node_name == name)
    row = connection.execute(query.with_for_update() if lock else query).first()
    if row is None or not _holds_name(row):
        return None
    if _is_joining(row):
        state = (
            f"joining: not live yet, holds its name {row.joining_left.total_seconds():.1f} s more"
        )
    else:
        state = f"lease {row.left.total_seconds():.1f} s left"
    return (
        f"node {name} is already running (pid {row.pid} on {row.hostname or '?'}, {state}): "
        "stop it, or wait for its lease to expire if that process is gone"
    )


REGISTER_SQL = f"""
WITH registered AS (
    INSERT INTO server_registry AS r (
        node_name, draining, region, ip_address, port_number, app_context, hostname, pid,
        is_active, incarnation, started_at, last_heartbeat_at, lease_started_at,
        lease_timeout_s, heartbeat_interval_s, stopped_at, app_healthy, last_verdict,
        joining_until)
    VALUES (
        %(node)s, false, %(region)s, %(ip_address)s, %(port_number)s, %(app_context)s,
        %(hostname)s, %(pid)s, false, %(incarnation)s, clock_timestamp(), clock_timestamp(),
        clock_timestamp(), %(lease)s, %(interval)s, NULL, NULL, %(verdict)s,
        clock_timestamp() + %(lease)s * interval '1 second')
    ON CONFLICT (node_name) DO UPDATE SET
        region = EXCLUDED.region, ip_address = EXCLUDED.ip_address,
        port_number = EXCLUDED.port_number, app_context = EXCLUDED.app_context,
        hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, is_active = false,
        incarnation = EXCLUDED.incarnation, started_at = EXCLUDED.started_at,
        last_heartbeat_at = EXCLUDED.last_heartbeat_at,
        lease_started_at = EXCLUDED.lease_started_at,
        lease_timeout_s = EXCLUDED.lease_timeout_s,
        heartbeat_interval_s = EXCLUDED.heartbeat_interval_s, stopped_at = NULL,
        app_healthy = NULL, last_verdict = EXCLUDED.last_verdict,
        joining_until = EXCLUDED.joining_until
    WHERE NOT ({HOLDS_NAME.format(t="r")})
    RETURNING r.id
), pruned AS (
    DELETE FROM server_registry AS old
    WHERE EXISTS (SELECT 1 FROM registered) AND old.node_name <> %(node)s
      AND COALESCE(old.stopped_at, old.last_heartbeat_at)
          < clock_timestamp() - %(retention_days)s * interval '1 day'
      AND NOT EXISTS (SELECT 1 FROM service_status AS s WHERE s.service_registry_id = old.id)
), declared AS (
    INSERT INTO service_status (service_type, epoch)
    SELECT unnest(%(services)s::text[]), 0 WHERE EXISTS (SELECT 1 FROM registered)
    ON CONFLICT (service_type) DO NOTHING
)
SELECT EXISTS (SELECT 1 FROM registered)
"""
"""Registration in one statement (one round trip from a far region): take the name unless a
live or joining process holds it (checked on the conflicting row under its lock, so two
processes starting at once cannot both take it), forget long-stopped nodes, and give each
declared service its row. The node starts joining: it holds its name, is not live, and
owns nothing until its first heartbeat through its consumer makes it live."""


def _registration_params(
    node: Registration, incarnation: str, services: Sequence[str]
) -> dict[str, Any]:
    return {
        "node": node.name,
        "region": node.region,
        "ip_address": node.ip_address,
        "port_number": node.port_number,
        "app_context": node.app_context,
        "hostname": node.hostname,
        "pid": node.pid,
        "incarnation": uuid.UUID(incarnation),
        "lease": node.lease_timeout,
        "interval": node.heartbeat_interval,
        "verdict": JOINING_VERDICT,
        "retention_days": node.retention_days,
        "services": list(services),
    }


def register_node(
    connection: Connection,
    node: Registration,
    incarnation: str,
    services: Sequence[str] = (),
) -> None:
    """Register or re-register a node under a new incarnation, as joining, unless a live or
    joining process holds the name (`Refused`, saying which).

    The node keeps its `draining` flag across restarts; everything about the process is new.
    """
    params = _registration_params(node, incarnation, services)
    taken = connection.exec_driver_sql(REGISTER_SQL, params).scalar()
    if not taken:
        raise Refused(name_holder(connection, node.name) or f"node {node.name} is taken")


def register(
    settings: Settings, node: Registration, incarnation: str, services: Sequence[str] = ()
) -> None:
    """`register_node` in one round trip, as its own transaction (a node's start)."""
    params = _registration_params(node, incarnation, services)
    if one_round_trip(settings, REGISTER_SQL, params):
        return
    with transaction(settings) as connection:
        holder = name_holder(connection, node.name)
    raise Refused(holder or f"node {node.name} is taken")


def _is_joining(row: Row[Any]) -> bool:
    return bool(not row.is_active and row.joining_until is not None)


def _holds_name(row: Row[Any]) -> bool:
    if row.stopped_at is not None:
        return False
    if _is_joining(row):
        return bool(row.joining_left.total_seconds() > 0)
    return bool(row.is_active and row.left.total_seconds() > 0)


JOIN_HOLD_SQL = (
    "UPDATE server_registry SET joining_until = clock_timestamp() "
    "+ lease_timeout_s * interval '1 second' "
    "WHERE node_name = %(node)s AND incarnation = %(incarnation)s AND stopped_at IS NULL "
    "AND joining_until IS NOT NULL RETURNING true"
)


def hold_while_joining(settings: Settings, me: Identity) -> bool:
    """Push this joining incarnation's hold on its name a lease further, in one round trip.

    Returns False once there is nothing to hold: it joined (its first renewal through its
    consumer), or it was stopped or replaced. Holding is not renewing: the node stays
    not live, and owns and judges nothing, until it joins."""
    params = {"node": me.name, "incarnation": uuid.UUID(me.incarnation)}
    return bool(one_round_trip(settings, JOIN_HOLD_SQL, params))


def count_restored(connection: Connection, me: Identity, count: int) -> None:
    """Count files this node put back into a hot folder (no claim left for them)."""
    connection.execute(
        update(nodes_t)
        .where(nodes_t.c.node_name == me.name)
        .values(restored_files=nodes_t.c.restored_files + count)
    )


def record_rejection(connection: Connection, me: Identity) -> None:
    """Count a fenced (rejected) side effect against this node, for metrics."""
    connection.execute(
        update(nodes_t)
        .where(nodes_t.c.node_name == me.name)
        .values(rejected_side_effects=nodes_t.c.rejected_side_effects + 1)
    )


def set_draining(
    connection: Connection, node: str, draining: bool, grace: float | None = None
) -> bool:
    """Store the node's maintenance flag and the grace its handovers give running work
    (None: the setting); False if there is no such node."""
    result = connection.execute(
        update(nodes_t)
        .where(nodes_t.c.node_name == node)
        .values(draining=draining, drain_grace_s=grace if draining else None)
    )
    return result.rowcount == 1
