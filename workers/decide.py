"""Who owns what: pure functions of a snapshot, the node that asks, and the policy.

No clock, no I/O. The heartbeat calls `decide` once per cycle; the locked takeover
transaction calls `refusal_to_acquire` again on freshly locked rows, so the rule that
planned an action is the very rule that re-checks it.

Liveness (invariants 3 and 4): a peer's lease counts as expired only when the database
time has passed `max(peer.last_heartbeat_at, me.lease_started_at) + peer.lease_timeout`.
The `me.lease_started_at` term is the outage rule: after an outage in which every lease
went stale, a survivor must hold its own lease for a whole lease period, giving its peers
the same chance to renew, before it may judge any of them dead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from workers.snapshot import Node, Service, Snapshot


@dataclass(frozen=True)
class Policy:
    """How eagerly a node takes services from other regions."""

    cross_region_delay: float = 1.0


@dataclass(frozen=True)
class MarkInactive:
    """Set `is_active = false` on a peer whose lease expired (only if it did not renew since)."""

    node: str
    last_heartbeat_at: datetime
    expired_for: float

    def describe(self) -> str:
        return f"marked {self.node} inactive: lease expired {self.expired_for:.1f} s ago"


@dataclass(frozen=True)
class Acquire:
    """Take a service: unowned (claim) or from a dead owner (takeover), at `epoch` + 1."""

    service: str
    from_node: str | None
    epoch: int
    reason: str
    why: str

    def describe(self) -> str:
        source = f"from {self.from_node}" if self.from_node else "unowned"
        return (
            f"taking {self.service} ({source}, epoch {self.epoch} -> {self.epoch + 1}): {self.why}"
        )


@dataclass(frozen=True)
class Dispatch:
    """Publish the service's due work to this node's own queue, tagged with the epoch."""

    service: str
    epoch: int

    def describe(self) -> str:
        return f"owner of {self.service} at epoch {self.epoch}"


@dataclass(frozen=True)
class Wait:
    """A service this node could take but leaves, for now, to a better-placed node."""

    service: str
    epoch: int
    why: str

    def describe(self) -> str:
        return f"waiting on {self.service} (epoch {self.epoch}): {self.why}"


Action = MarkInactive | Acquire | Dispatch | Wait


@dataclass(frozen=True)
class Decision:
    """The actions of one heartbeat and a one-line verdict for logs and `failover status`."""

    actions: tuple[Action, ...]
    verdict: str


def seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def expired_for(peer: Node, judge: Node, now: datetime) -> float | None:
    """Seconds since `peer` counts as gone in `judge`'s eyes, or None while it counts as alive."""
    if peer.stopped_at is not None:
        return max(0.0, seconds(now - peer.stopped_at))
    start = max(peer.last_heartbeat_at, judge.lease_started_at)
    overdue = seconds(now - start) - peer.lease_timeout
    return overdue if overdue > 0 else None


def own_lease_problem(me: Node | None, now: datetime) -> str | None:
    """Why this node may not judge anyone right now, or None when its own lease is fresh."""
    if me is None:
        return "not registered"
    if me.stopped_at is not None:
        return "stopped"
    if not me.is_active:
        return "marked inactive"
    left = me.lease_left(now)
    if left <= 0:
        return f"own lease expired {-left:.1f} s ago"
    return None


def may_acquire(me: Node) -> bool:
    return not me.draining


def decide(snapshot: Snapshot, me_name: str, policy: Policy) -> Decision:
    """Plan this node's heartbeat: mark dead peers, claim or take services, dispatch its own."""
    me = snapshot.node(me_name)
    problem = own_lease_problem(me, snapshot.now)
    if me is None or problem:
        return Decision((), f"standby: {problem}; judging no peer")
    actions: list[Action] = [*_dead_peers(snapshot, me)]
    for service in snapshot.services:
        action = _service_action(snapshot, me, service, policy)
        if action is not None:
            actions.append(action)
    return Decision(tuple(actions), _verdict(me, actions))


def _dead_peers(snapshot: Snapshot, me: Node) -> list[MarkInactive]:
    marks = []
    for peer in snapshot.nodes:
        if peer.id == me.id or not peer.is_active:
            continue
        overdue = expired_for(peer, me, snapshot.now)
        if overdue is not None:
            marks.append(MarkInactive(peer.name, peer.last_heartbeat_at, overdue))
    return marks


def _service_action(
    snapshot: Snapshot, me: Node, service: Service, policy: Policy
) -> Action | None:
    if service.owner_id == me.id:
        return Dispatch(service.name, service.epoch)
    if not may_acquire(me):
        return None
    owner = snapshot.node_by_id(service.owner_id)
    if owner is None:
        reason = "startup" if service.epoch == 0 else "takeover"
        why = "released by its owner" if service.reason == "release" else "first come, first served"
        return Acquire(service.name, None, service.epoch, reason, why)
    overdue = expired_for(owner, me, snapshot.now)
    if overdue is None:
        return None
    why_wait = _cross_region_wait(snapshot, me, owner, overdue, policy)
    if why_wait:
        return Wait(service.name, service.epoch, why_wait)
    how = "stopped" if owner.stopped_at else "lease expired"
    return Acquire(
        service.name, owner.name, service.epoch, "takeover", f"{how} {overdue:.1f} s ago"
    )


def _cross_region_wait(
    snapshot: Snapshot, me: Node, owner: Node, overdue: float, policy: Policy
) -> str | None:
    """A reason to leave the service to the owner's region for now, or None to go ahead."""
    if me.region == owner.region or overdue >= policy.cross_region_delay:
        return None
    local = [
        node.name
        for node in snapshot.nodes
        if node.region == owner.region
        and node.id != owner.id
        and node.is_live(snapshot.now)
        and may_acquire(node)
    ]
    if not local:
        return None
    left = policy.cross_region_delay - overdue
    return (
        f"{', '.join(local)} in {owner.region} go first ({left:.1f} s of cross-region delay left)"
    )


def _verdict(me: Node, actions: list[Action]) -> str:
    if not actions:
        return "standby: all services owned by live nodes"
    return "; ".join(action.describe() for action in actions)


def refusal_to_acquire(
    snapshot: Snapshot, me_name: str, service_name: str, from_node: str | None, epoch: int
) -> str | None:
    """Re-check, on freshly locked rows, a planned claim or takeover: a reason not to, or None.

    Refuses when this node is no longer fit to own, when the service moved since it was
    planned (another node won), or when the owner's lease is fresh again.
    """
    me = snapshot.node(me_name)
    problem = own_lease_problem(me, snapshot.now)
    if me is None or problem:
        return problem
    if not may_acquire(me):
        return "this node is draining"
    service = snapshot.service(service_name)
    if service is None:
        return f"unknown service {service_name}"
    owner = snapshot.node_by_id(service.owner_id)
    current = owner.name if owner else None
    if current != from_node or service.epoch != epoch:
        return f"already moved: owned by {current or 'nobody'} at epoch {service.epoch}"
    if owner is not None and expired_for(owner, me, snapshot.now) is None:
        return f"{owner.name}'s lease is fresh ({owner.lease_left(snapshot.now):.1f} s left)"
    return None
