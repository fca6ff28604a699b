"""The ownership timeline's facts: ownership changes and node events in a window, read from
the database (`read_timeline`), and the segments each lane is made of (owner or state, from
when to when). `timeline_svg.py` draws them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

WINDOWS = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
"""The windows an operator can pick, by the name the page and `--window` use."""

PALETTE = (
    "#4e79a7", "#b07aa1", "#17becf", "#edc948", "#9c755f",
    "#1f3b73", "#ff9da7", "#76b7b2", "#7f3c8d", "#bcbd22",
)  # fmt: skip
"""Owner colours: a node keeps its colour on every lane and in the page; none is the green,
amber, red or grey of a node's state."""

NODE_STATES = {
    "live": "#59a14f",
    "draining": "#f1a340",
    "dead": "#d62728",
    "stopped": "#9e9e9e",
}
REASON_MARKS = {
    "startup": ("S", "#2c7fb8"),
    "takeover": ("T", "#d62728"),
    "manual": ("M", "#6a51a3"),
    "drain": ("D", "#e6550d"),
    "release": ("R", "#636363"),
    "failback": ("F", "#31a354"),
}
NODE_EVENT_STATE = {
    "started": "live",
    "revived": "live",
    "expired": "dead",
    "stopped": "stopped",
}


@dataclass(frozen=True)
class Timeline:
    """What the picture shows, oldest first; `changes` and `node_events` may start before
    `start` (the last one before it says who owned or what state held when the window opens).

    changes: dicts with at (datetime), service, from, to, epoch, reason, actor, detail.
    node_events: dicts with at (datetime), node, region, event, detail.
    """

    start: datetime
    end: datetime
    services: list[str]
    nodes: list[tuple[str, str]]
    changes: list[dict[str, Any]] = field(default_factory=list)
    node_events: list[dict[str, Any]] = field(default_factory=list)
    colours: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """A stretch of a lane: from `begin` to `finish`, in `state` (an owner or a node state)."""

    begin: datetime
    finish: datetime
    state: str | None
    title: str


def owner_colour(node: str | None, colours: dict[str, str] | None = None) -> str:
    """A node's colour: its place among the registered nodes (`colour_map`), so that up to
    ten nodes never share one; otherwise a hash of its name, stable across pages and reports."""
    if not node:
        return "#ffffff"
    if colours and node in colours:
        return colours[node]
    digest = hashlib.sha256(node.encode()).digest()
    return PALETTE[digest[0] % len(PALETTE)]


def colour_map(registered: list[str]) -> dict[str, str]:
    """The registered nodes' colours, in name order: the page and the timeline use this map."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(registered)))}


def mark_kind(change: dict[str, Any]) -> str:
    """The reason a change is marked with: a drain is told apart from another manual move."""
    reason = str(change.get("reason") or "")
    said = f"{change.get('actor') or ''} {change.get('detail') or ''}".lower()
    if reason == "manual" and "drain" in said:
        return "drain"
    return reason


def clock_label(moment: datetime, span: timedelta) -> str:
    shown = "%Y-%m-%d %H:%M:%S" if span > timedelta(hours=24) else "%H:%M:%S"
    return moment.strftime(shown)


def service_segments(timeline: Timeline, service: str) -> list[Segment]:
    """Who owned `service` across the window: one segment per owner in turn."""
    changes = [c for c in timeline.changes if c["service"] == service]
    segments: list[Segment] = []
    owner: str | None = None
    known = False
    begin = timeline.start
    epoch: int | None = None
    for change in changes:
        at = max(change["at"], timeline.start)
        if at > timeline.end:
            break
        if at > begin and known:
            segments.append(_owner_segment(service, begin, at, owner, epoch, timeline))
        owner, epoch, known, begin = change["to"], change["epoch"], True, at
    if known and begin < timeline.end:
        segments.append(_owner_segment(service, begin, timeline.end, owner, epoch, timeline))
    return segments


def _owner_segment(
    service: str,
    begin: datetime,
    finish: datetime,
    owner: str | None,
    epoch: int | None,
    timeline: Timeline,
) -> Segment:
    span = timeline.end - timeline.start
    who = f"owned by {owner}" if owner else "no owner"
    when = f"from {clock_label(begin, span)} to {clock_label(finish, span)}"
    title = f"{service}: {who} (epoch {epoch}) {when}"
    return Segment(begin, finish, owner, title)


def node_segments(timeline: Timeline, node: str) -> list[Segment]:
    """The node's state across the window: live, draining, dead or stopped."""
    events = [e for e in timeline.node_events if e["node"] == node]
    span = timeline.end - timeline.start
    segments: list[Segment] = []
    alive: str | None = None
    draining = False
    begin = timeline.start

    def shown() -> str | None:
        return "draining" if alive == "live" and draining else alive

    for event in events:
        at = max(event["at"], timeline.start)
        if at > timeline.end:
            break
        before = shown()
        alive = NODE_EVENT_STATE.get(event["event"], alive)
        if event["event"] in ("draining", "undrained"):
            draining = event["event"] == "draining"
        if shown() != before:
            if before is not None and at > begin:
                segments.append(_node_segment(node, begin, at, before, span))
            begin = at
    if shown() is not None and begin < timeline.end:
        segments.append(_node_segment(node, begin, timeline.end, str(shown()), span))
    return segments


def _node_segment(
    node: str, begin: datetime, finish: datetime, state: str, span: timedelta
) -> Segment:
    title = f"{node}: {state} from {clock_label(begin, span)} to {clock_label(finish, span)}"
    return Segment(begin, finish, state, title)


def read_timeline(
    connection: Connection, window: timedelta, now: datetime | None = None
) -> Timeline:
    """The changes and node events of the last `window` from the database, plus the last of
    each before it (for a node: its last state and its last drain flag), the services and
    nodes to draw, and a `dead` state for a node whose lease lapsed that nobody marked (the
    last node standing, for one)."""
    now = now or connection.execute(text("SELECT clock_timestamp()")).scalar_one()
    start = now - window
    changes = [dict(row._mapping) for row in connection.execute(CHANGES_SQL, {"start": start})]
    events = [dict(row._mapping) for row in connection.execute(EVENTS_SQL, {"start": start})]
    services = list(connection.execute(text(SERVICES_SQL)).scalars())
    nodes = list(connection.execute(NODES_SQL).all())
    events += _unmarked_lapses(nodes, events, now)
    events.sort(key=lambda event: event["at"])
    known = {(row.node_name, row.region) for row in nodes}
    known |= {(e["node"], e["region"]) for e in events if e["at"] >= start}
    colours = colour_map([row.node_name for row in nodes])
    return Timeline(start, now, services, sorted(known), changes, events, colours)


def _unmarked_lapses(
    nodes: list[Any], events: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    lapses = []
    for row in nodes:
        lapsed = row.last_heartbeat_at + timedelta(seconds=row.lease_timeout_s)
        mine = [e for e in events if e["node"] == row.node_name]
        last = mine[-1]["event"] if mine else None
        if row.stopped_at is None and lapsed < now and last not in ("expired", "stopped"):
            lapses.append(
                {
                    "at": max([lapsed, *(e["at"] for e in mine)]),
                    "node": row.node_name,
                    "region": row.region,
                    "event": "expired",
                    "detail": "lease lapsed",
                }
            )
    return lapses


SERVICES_SQL = "SELECT service_type FROM service_status ORDER BY service_type"
CHANGES_SQL = text(
    "SELECT * FROM ("
    " SELECT DISTINCT ON (service_type) changed_at AS at, service_type AS service,"
    ' from_node AS "from", to_node AS "to", epoch, reason, actor, detail'
    " FROM ownership_history WHERE changed_at < :start"
    " ORDER BY service_type, changed_at DESC, id DESC) AS before"
    " UNION ALL"
    " SELECT changed_at, service_type, from_node, to_node, epoch, reason, actor, detail"
    " FROM ownership_history WHERE changed_at >= :start"
    " ORDER BY at"
)
EVENTS_SQL = text(
    "SELECT * FROM ("
    " SELECT DISTINCT ON (node_name, event IN ('draining', 'undrained'))"
    " at, node_name AS node, region, event, detail FROM node_event WHERE at < :start"
    " ORDER BY node_name, event IN ('draining', 'undrained'), at DESC, id DESC) AS before"
    " UNION ALL"
    " SELECT at, node_name, region, event, detail FROM node_event WHERE at >= :start"
    " ORDER BY at"
)
NODES_SQL = text(
    "SELECT node_name, region, last_heartbeat_at, lease_timeout_s, stopped_at, is_active"
    " FROM server_registry ORDER BY node_name"
)
