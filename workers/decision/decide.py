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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from workers.decision.placement import Placement, best_candidate, candidates, failback_refusal, rank
from workers.decision.snapshot import Node, Service, Snapshot


@dataclass(frozen=True)
class Policy:
    """How a node chooses: the wait for better-placed nodes, and each service's placement."""

    cross_region_delay: float = 1.0
    placements: Mapping[str, Placement] = field(default_factory=dict)

    def placement(self, service: str) -> Placement:
        return self.placements.get(service, Placement())

    def any_failback(self) -> bool:
        """Whether a failback may be planned at any beat (it needs every candidate)."""
        return any(placement.failback for placement in self.placements.values())


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
class Handover:
    """A draining owner asks `to` to take the service (the manual failover task, on `to`)."""

    service: str
    epoch: int
    to: str

    def describe(self) -> str:
        return f"draining: handing {self.service} (epoch {self.epoch}) to {self.to}"


@dataclass(frozen=True)
class Wait:
    """A service this node could take but leaves, for now, to a better-placed node."""

    service: str
    epoch: int
    why: str

    def describe(self) -> str:
        return f"waiting on {self.service} (epoch {self.epoch}): {self.why}"


Action = MarkInactive | Acquire | Dispatch | Handover | Wait


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
        return "joining" if me.joining_until is not None else "marked inactive"
    left = me.lease_left(now)
    if left <= 0:
        return f"own lease expired {-left:.1f} s ago"
    return None


PARTIAL = "choosing needs every node: reading them all at the next beat"


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
    placement = policy.placement(service.name)
    if service.owner_id == me.id:
        return _owner_action(snapshot, me, service, placement)
    if not may_acquire(me):
        return None
    owner = snapshot.node_by_id(service.owner_id)
    overdue = expired_for(owner, me, snapshot.now) if owner else None
    if not snapshot.complete and (owner is None or overdue is not None):
        return Wait(service.name, service.epoch, PARTIAL)
    if owner is None:
        return _claim(snapshot, me, service, policy)
    if overdue is None and service.handing_over:
        return _grace_ended(snapshot, me, service, owner)
    if overdue is None:
        return _failback(snapshot, me, service, owner, placement) if snapshot.complete else None
    why_wait = _better_placed_wait(snapshot, me, service, owner, overdue, policy)
    if why_wait:
        return Wait(service.name, service.epoch, why_wait)
    how = "stopped" if owner.stopped_at else "lease expired"
    return Acquire(
        service.name, owner.name, service.epoch, "takeover", f"{how} {overdue:.1f} s ago"
    )


def _owner_action(snapshot: Snapshot, me: Node, service: Service, placement: Placement) -> Action:
    if me.draining and snapshot.complete and not service.handing_over:
        successor = best_candidate(snapshot, service.name, placement, {me.name})
        if successor is not None:
            return Handover(service.name, service.epoch, successor.name)
    return Dispatch(service.name, service.epoch)


def grace_ended(snapshot: Snapshot, me_name: str, service: Service) -> float | None:
    """Seconds since the grace of a handover to `me_name` ended, or None while it runs (or
    when the service is not handing over to `me_name`)."""
    if not service.handing_over or service.handover_to != me_name:
        return None
    if service.handover_until is None or snapshot.now < service.handover_until:
        return None
    return seconds(snapshot.now - service.handover_until)


def _grace_ended(snapshot: Snapshot, me: Node, service: Service, owner: Node) -> Action | None:
    """A live owner hands the service over to this node: take it once the grace ended (what
    still runs is cut then); before, its owner hands it over when its work ended."""
    ended = grace_ended(snapshot, me.name, service)
    if ended is None:
        return None
    why = f"the handover's grace ended {ended:.1f} s ago: cutting what still runs"
    reason = service.handover_reason or "manual"
    return Acquire(service.name, owner.name, service.epoch, reason, why)


def _claim(snapshot: Snapshot, me: Node, service: Service, policy: Policy) -> Action:
    unowned_since = service.acquired_at or me.lease_started_at
    unowned_for = seconds(snapshot.now - unowned_since)
    why_wait = _better_placed_wait(snapshot, me, service, None, unowned_for, policy)
    if why_wait:
        return Wait(service.name, service.epoch, why_wait)
    reason = "startup" if service.epoch == 0 else "takeover"
    why = "released by its owner" if service.reason == "release" else "first come, first served"
    return Acquire(service.name, None, service.epoch, reason, why)


def _failback(
    snapshot: Snapshot, me: Node, service: Service, owner: Node, placement: Placement
) -> Action | None:
    if failback_refusal(snapshot, me, service.name, placement) is not None:
        return None
    healthy_for = seconds(snapshot.now - me.lease_started_at)
    why = f"preferred node back and healthy for {healthy_for:.1f} s"
    return Acquire(service.name, owner.name, service.epoch, "failback", why)


FIRST_CANDIDATES = 2


def _better_placed_wait(
    snapshot: Snapshot,
    me: Node,
    service: Service,
    owner: Node | None,
    waited: float,
    policy: Policy,
) -> str | None:
    """A reason to leave the service to better-placed live nodes for now, or None to go ahead.

    Better placed: preferred by the service's placement, or in the region it is leaving (its
    dead owner's, or for an unowned service the region of the owner that released it); among
    equals, the first `FIRST_CANDIDATES` by name, so that a large cluster does not send every
    node after the same service. The others get `cross_region_delay` seconds to act first.
    """
    if waited >= policy.cross_region_delay:
        return None
    placement = policy.placement(service.name)
    home = owner.region if owner else service.home_region
    exclude = {me.name} | ({owner.name} if owner else set())
    mine = (rank(me, placement, home), me.name)
    ahead = [
        node
        for node in candidates(snapshot, placement, home, exclude)
        if (rank(node, placement, home), node.name) < mine
    ]
    better = [node.name for node in ahead if rank(node, placement, home) < mine[0]]
    if not better and len(ahead) < FIRST_CANDIDATES:
        return None
    left = policy.cross_region_delay - waited
    if better:
        return f"{', '.join(better)} placed better, going first ({left:.1f} s of delay left)"
    first = ", ".join(node.name for node in ahead)
    return f"{first} first among equals ({left:.1f} s of delay left)"


def _verdict(me: Node, actions: list[Action]) -> str:
    if not actions:
        return "standby: all services owned by live nodes"
    return "; ".join(action.describe() for action in actions)


def refusal_to_acquire(
    snapshot: Snapshot, me_name: str, action: Acquire, policy: Policy
) -> str | None:
    """Re-check, on freshly locked rows, a planned claim, takeover or failback.

    Returns a reason not to (this node is no longer fit to own, the service moved since it
    was planned, the owner's lease is fresh again and this is no failback), or None.
    """
    me = snapshot.node(me_name)
    problem = own_lease_problem(me, snapshot.now)
    if me is None or problem:
        return problem
    if not may_acquire(me):
        return "this node is draining"
    service = snapshot.service(action.service)
    if service is None:
        return f"unknown service {action.service}"
    owner = snapshot.node_by_id(service.owner_id)
    current = owner.name if owner else None
    if current != action.from_node or service.epoch != action.epoch:
        return f"already moved: owned by {current or 'nobody'} at epoch {service.epoch}"
    if grace_ended(snapshot, me.name, service) is not None:
        return None
    if action.reason == "failback":
        return failback_refusal(snapshot, me, action.service, policy.placement(action.service))
    if owner is not None and expired_for(owner, me, snapshot.now) is None:
        return f"{owner.name}'s lease is fresh ({owner.lease_left(snapshot.now):.1f} s left)"
    return None
