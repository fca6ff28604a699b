"""`failover status`: who owns what and why, as one JSON object or as tables for people."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, select

from workers import services
from workers.decision.snapshot import Node, Snapshot
from workers.errors import ConfigError
from workers.settings import Settings, require_service
from workers.stores import store
from workers.stores.tables import ownership_history as history_t
from workers.stores.tables import server_registry as nodes_t
from workers.stores.tables import service_status as services_t

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _age(now: datetime, moment: datetime | None) -> float | None:
    return round((now - moment).total_seconds(), 3) if moment else None


def _address(row: Any) -> str | None:
    if not (row.ip_address and row.port_number):
        return None
    return f"{row.ip_address}:{row.port_number}/{(row.app_context or '').lstrip('/')}"


def _node_entry(snapshot: Snapshot, node: Node, row: Any) -> dict[str, Any]:
    now = snapshot.now
    return {
        "name": node.name,
        "region": node.region,
        "address": _address(row),
        "active": node.is_active,
        "live": node.is_live(now),
        "last_heartbeat_age_s": _age(now, node.last_heartbeat_at),
        "lease_left_s": round(node.lease_left(now), 3),
        "lease_timeout_s": node.lease_timeout,
        "heartbeat_interval_s": row.heartbeat_interval_s,
        "draining": node.draining,
        "stopped": node.stopped_at is not None,
        "joining": node.is_joining(now),
        "app_healthy": row.app_healthy,
        "incarnation": node.incarnation,
        "hostname": row.hostname,
        "pid": row.pid,
        "started_at": _iso(row.started_at),
        "verdict": row.last_verdict,
        "rejected_side_effects": row.rejected_side_effects,
        "db_round_trip_ms": _ms(row.db_round_trip_ms),
        "broker_round_trip_ms": _ms(row.broker_round_trip_ms),
        "heartbeat_cycle_ms": _ms(row.heartbeat_cycle_ms),
        "database_server": row.database_server,
        "database_changed_at": _iso(row.database_changed_at),
        "broker_server": row.broker_server,
        "broker_changed_at": _iso(row.broker_changed_at),
        "database_encrypted": row.database_encrypted,
        "broker_encrypted": row.broker_encrypted,
        "restored_files": row.restored_files,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _latency(node: dict[str, Any]) -> str:
    """`db / broker / cycle` in milliseconds, as the node measured them."""
    parts = (node["db_round_trip_ms"], node["broker_round_trip_ms"], node["heartbeat_cycle_ms"])
    return " / ".join("-" if part is None else f"{part:.0f}" for part in parts)


ENCRYPTION = {True: " TLS", False: " plain", None: ""}
"""How a node's link to a store is shown: encrypted, in the clear, or not said yet."""


def _servers(node: dict[str, Any]) -> str:
    """The database server and broker the node last reached, whether over TLS, and when each
    last changed."""
    parts = []
    for store_name in ("database", "broker"):
        server = (node[f"{store_name}_server"] or "-") + ENCRYPTION[node[f"{store_name}_encrypted"]]
        changed = node[f"{store_name}_changed_at"]
        parts.append(f"{server} (since {changed[11:19]})" if changed else server)
    return "\n".join(parts)


def _service_entry(
    connection: Connection, settings: Settings, snapshot: Snapshot, row: Any
) -> dict[str, Any]:
    owner = snapshot.node_by_id(row.service_registry_id)
    policy = settings.policy()
    return {
        "service": row.service_type,
        "owner": owner.name if owner else None,
        "owner_live": owner.is_live(snapshot.now) if owner else False,
        "epoch": row.epoch,
        "since": _iso(row.acquired_at),
        "reason": row.acquired_reason,
        "actor": row.acquired_by,
        "detail": row.acquired_detail,
        "placement": policy.placement(row.service_type).describe(),
        "handover": _handover(connection, settings, snapshot, row),
    }


def _handover(
    connection: Connection, settings: Settings, snapshot: Snapshot, row: Any
) -> dict[str, Any] | None:
    """A planned handover in progress (None if there is none): from and to whom, why, what
    still runs on the owner (None: only the owner knows), time left."""
    if row.handover_since is None:
        return None
    left = row.handover_until and (row.handover_until - snapshot.now).total_seconds()
    owner = snapshot.node_by_id(row.service_registry_id)
    return {
        "from": owner.name if owner else None,
        "running": services.running_work(settings, row.service_type)(connection),
        "to": row.handover_to,
        "since": _iso(row.handover_since),
        "until": _iso(row.handover_until),
        "left_s": None if left is None else round(left, 1),
        "reason": row.handover_reason,
        "actor": row.handover_actor,
        "detail": row.handover_detail,
    }


def parse_since(value: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 time, or a duration back from now such as 90s, 15m, 2h, 1d."""
    match = DURATION.match(value)
    if match:
        return now - timedelta(seconds=float(match[1]) * UNITS[match[2]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {value!r}: use an ISO time or a duration like 15m") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)


def history(
    connection: Connection, service: str | None = None, since: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Ownership changes, newest first, optionally for one service and since a moment."""
    query = select(history_t).order_by(history_t.c.changed_at.desc(), history_t.c.id.desc())
    if service is not None:
        require_service(service, services.known_services(connection))
        query = query.where(history_t.c.service_type == service)
    if since is not None:
        start = parse_since(since, store.database_now(connection))
        query = query.where(history_t.c.changed_at >= start)
    return [
        {
            "at": _iso(row.changed_at),
            "service": row.service_type,
            "from": row.from_node,
            "to": row.to_node,
            "epoch": row.epoch,
            "reason": row.reason,
            "actor": row.actor,
            "detail": row.detail,
            "handover_waited_s": _ms(row.handover_waited_s),
            "handover_cut": row.handover_cut,
        }
        for row in connection.execute(query.limit(limit))
    ]


def cluster_status(connection: Connection, settings: Settings, events: int = 10) -> dict[str, Any]:
    """Nodes, services and the latest ownership events, read in one transaction."""
    snapshot = store.read_snapshot(connection)
    rows = {row.node_name: row for row in connection.execute(select(nodes_t))}
    owned = connection.execute(select(services_t).order_by(services_t.c.service_type))
    return {
        "database_time": _iso(snapshot.now),
        "nodes": [_node_entry(snapshot, node, rows[node.name]) for node in snapshot.nodes],
        "services": [_service_entry(connection, settings, snapshot, row) for row in owned],
        **services.status_sections(connection, settings),
        "events": history(connection, limit=events),
    }


Cell = str | Text


def _node_state(node: dict[str, Any]) -> Text:
    if node["stopped"]:
        return Text("stopped", style="dim")
    if node.get("joining"):
        return Text("joining", style="yellow")
    if node["live"]:
        return Text("draining", style="yellow") if node["draining"] else Text("live", "green")
    return Text("dead" if not node["active"] else "lease expired", style="red")


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Cell, ...]]) -> Table:
    """A table whose plain-string cells are shown literally: stored text is never markup."""
    table = Table(*columns, title=title, title_justify="left")
    for row in rows:
        table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in row))
    return table


def _node_row(node: dict[str, Any]) -> tuple[Cell, ...]:
    return (
        node["name"],
        node["region"],
        node["address"] or "-",
        _node_state(node),
        f"{node['last_heartbeat_age_s']:.1f} s",
        f"{max(node['lease_left_s'], 0):.1f} s",
        _latency(node),
        _servers(node),
        node["verdict"] or "",
    )


def _service_row(service: dict[str, Any]) -> tuple[Cell, ...]:
    owner = Text(service["owner"]) if service["owner"] else Text("nobody", style="red")
    if service["owner"] and not service["owner_live"]:
        owner.append(" (not live)", style="red")
    handover = service.get("handover")
    if handover:
        owner.append(f"\n{_handover_cell(handover)}", style="yellow")
    return (
        service["service"],
        owner,
        str(service["epoch"]),
        service["since"] or "-",
        service["reason"] or "-",
        service["detail"] or "",
        service["placement"],
    )


def _handover_cell(handover: dict[str, Any]) -> str:
    """`handing over to b: 2 running, 12 s left` (or released, for a graceful stop)."""
    to = f"handing over to {handover['to']}" if handover["to"] else "stopping: releasing"
    running = handover["running"]
    what = "its current runs" if running is None else f"{len(running)} running"
    left = handover["left_s"]
    return f"{to}: {what}, {max(left or 0.0, 0.0):.0f} s left"


def _event_row(event: dict[str, Any]) -> tuple[Cell, ...]:
    return (
        event["at"],
        event["service"],
        event["from"] or "-",
        event["to"] or "-",
        str(event["epoch"]),
        event["reason"],
        event["actor"] or "",
        _with_handover(event),
    )


def _with_handover(event: dict[str, Any]) -> str:
    """The event's why, and for a planned handover how long it waited and what it cut."""
    why = event["detail"] or ""
    waited, cut = event.get("handover_waited_s"), event.get("handover_cut")
    if waited is None:
        return why if not cut else f"{why} ({cut} run(s) cut)"
    return f"{why} (waited {waited:.1f} s for running work; {cut or 'nothing'} cut)"


def render(status: dict[str, Any]) -> RenderableType:
    """The status as three tables: nodes, services, recent ownership events."""
    return Group(
        _table(
            "Nodes",
            (
                "node",
                "region",
                "address",
                "state",
                "heartbeat age",
                "lease left",
                "db / broker / cycle ms",
                "database / broker server",
                "verdict",
            ),
            [_node_row(node) for node in status["nodes"]],
        ),
        _table(
            "Services",
            ("service", "owner", "epoch", "since", "reason", "why", "placement"),
            [_service_row(service) for service in status["services"]],
        ),
        event_table("Recent ownership events", status["events"]),
        *_service_tables(status),
    )


def _service_tables(status: dict[str, Any]) -> list[Table]:
    """A table per services' section that has rows (hot folders, scripts, custom services)."""
    return [
        _table(section.title, section.columns, [section.cells(row) for row in status[section.key]])
        for section in services.SECTIONS
        if status.get(section.key)
    ]


def event_table(title: str, events: list[dict[str, Any]]) -> Table:
    """Ownership events as a table: newest first, who moved what, and why."""
    columns = ("at", "service", "from", "to", "epoch", "reason", "by", "why")
    return _table(title, columns, [_event_row(event) for event in events])
