"""Where a service should run: preferences, failback, and who may receive a move. Pure.

A service's placement ranks the candidate nodes: first its preferred nodes in order, then
its preferred regions in order, then (for a takeover) the dead owner's region, then the
name. Failback to a preferred node is off by default (the seed's behaviour: a node that
returns stands by); when on, the node must have held an unbroken lease for the dwell time,
and the database time must fall inside the failback window, so a flapping node cannot
bounce a service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

from workers.decision.snapshot import Node, Snapshot

NO_PLACEMENT_NAME = "no placement: first come, first served"


@dataclass(frozen=True)
class Placement:
    preferred_nodes: tuple[str, ...] = ()
    preferred_regions: tuple[str, ...] = ()
    failback: bool = False
    failback_dwell: float = 30.0
    failback_window: tuple[time, time] | None = None

    def preference(self, node: Node) -> tuple[int, int]:
        """Lower is better: (place among preferred nodes, place among preferred regions)."""
        by_node = _index(self.preferred_nodes, node.name)
        by_region = _index(self.preferred_regions, node.region)
        return by_node, by_region

    def in_window(self, now: datetime) -> bool:
        """Whether `now` (database time, UTC) is inside the failback window, if there is one."""
        if self.failback_window is None:
            return True
        start, end = self.failback_window
        moment = now.timetz().replace(tzinfo=None)
        return start <= moment < end if start <= end else moment >= start or moment < end

    def describe(self) -> str:
        parts = []
        if self.preferred_nodes:
            parts.append("nodes " + " > ".join(self.preferred_nodes))
        if self.preferred_regions:
            parts.append("regions " + " > ".join(self.preferred_regions))
        if self.failback:
            window = self.failback_window
            hours = f" between {window[0]:%H:%M} and {window[1]:%H:%M} UTC" if window else ""
            parts.append(f"failback after {self.failback_dwell:g} s healthy{hours}")
        return "prefers " + "; ".join(parts) if parts else NO_PLACEMENT_NAME


def _index(values: tuple[str, ...], value: str) -> int:
    return values.index(value) if value in values else len(values)


def eligible(node: Node, now: datetime) -> bool:
    """May receive a service: live, not draining, its application not known to be failing."""
    return node.is_live(now) and not node.draining and node.app_healthy is not False


def rank(node: Node, placement: Placement, home_region: str | None) -> tuple[int, int, int]:
    """How well placed a candidate is (lower is better); `home_region`: where the service was."""
    away = 0 if home_region is None or node.region == home_region else 1
    return (*placement.preference(node), away)


def candidates(
    snapshot: Snapshot, placement: Placement, home_region: str | None, exclude: set[str]
) -> list[Node]:
    """Eligible nodes, best first."""
    nodes = [
        node for node in snapshot.nodes if node.name not in exclude and eligible(node, snapshot.now)
    ]
    return sorted(nodes, key=lambda node: (rank(node, placement, home_region), node.name))


def best_candidate(
    snapshot: Snapshot, service: str, placement: Placement, exclude: set[str] | None = None
) -> Node | None:
    """Where the service should go if its owner gave it up now, or None if nowhere."""
    current = snapshot.service(service)
    owner = snapshot.node_by_id(current.owner_id) if current else None
    skip = set(exclude or ()) | ({owner.name} if owner else set())
    found = candidates(snapshot, placement, owner.region if owner else None, skip)
    return found[0] if found else None


def move_refusal(snapshot: Snapshot, target_name: str, service_name: str) -> str | None:
    """Why `target_name` may not receive `service_name` by a manual move, or None if it may."""
    service = snapshot.service(service_name)
    target = snapshot.node(target_name)
    if service is None:
        return f"unknown service {service_name}"
    if target is None:
        return f"unknown node {target_name}"
    if service.owner_id == target.id:
        return f"{target_name} already owns {service_name} (epoch {service.epoch})"
    if target.stopped_at is not None:
        return f"{target_name} is stopped"
    if not target.is_live(snapshot.now):
        return f"{target_name} is not live (no fresh lease)"
    if target.draining:
        return f"{target_name} is draining"
    if target.app_healthy is False:
        return f"{target_name}'s application is failing its health check"
    return None


def failback_refusal(
    snapshot: Snapshot, me: Node, service_name: str, placement: Placement
) -> str | None:
    """Why `me` may not take `service_name` back from its live owner now, or None if it may."""
    service = snapshot.service(service_name)
    owner = snapshot.node_by_id(service.owner_id) if service else None
    if not placement.failback:
        return "failback is off"
    if owner is None or owner.id == me.id:
        return "nothing to fail back"
    if placement.preference(me) >= placement.preference(owner):
        return f"{me.name} is not preferred over {owner.name}"
    best = candidates(snapshot, placement, None, {owner.name})
    if not best or best[0].name != me.name:
        return "another node is preferred"
    healthy_for = (snapshot.now - me.lease_started_at).total_seconds()
    if healthy_for < placement.failback_dwell:
        return f"healthy for {healthy_for:.1f} s of the {placement.failback_dwell:g} s dwell"
    if not placement.in_window(snapshot.now):
        return "outside the failback window"
    return None
