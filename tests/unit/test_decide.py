"""The ownership decision on hand-built snapshots: no server, no clock, no patching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workers.decision.decide import (
    Acquire,
    Dispatch,
    MarkInactive,
    Policy,
    Wait,
    decide,
    expired_for,
    refusal_to_acquire,
)
from workers.decision.snapshot import Node, Service, Snapshot

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = 3.0
POLICY = Policy(cross_region_delay=1.0)
TAKE_X_FROM_A = Acquire("x", "a", 7, "takeover", "lease expired")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def node(
    node_id: int, name: str, region: str = "r1", beat: float = 0.0, since: float = -100.0, **kw
) -> Node:
    return Node(
        id=node_id,
        name=name,
        region=region,
        is_active=kw.pop("is_active", True),
        last_heartbeat_at=at(beat),
        lease_started_at=at(since),
        lease_timeout=LEASE,
        **kw,
    )


def snapshot(now: float, nodes: list[Node], owners: dict[str, tuple[int | None, int]]) -> Snapshot:
    services = tuple(Service(name, owner, epoch) for name, (owner, epoch) in owners.items())
    return Snapshot(at(now), tuple(nodes), services)


def kinds(decision, kind):
    return [action for action in decision.actions if isinstance(action, kind)]


def test_unowned_services_are_claimed_first_come_first_served():
    # Given a fresh cluster where nobody owns anything
    snap = snapshot(0.5, [node(1, "a"), node(2, "b")], {"folder_monitor": (None, 0)})
    # When a node decides
    decision = decide(snap, "a", POLICY)
    # Then it claims the service at startup
    assert kinds(decision, Acquire) == [
        Acquire("folder_monitor", None, 0, "startup", "first come, first served")
    ]


def test_owner_dispatches_its_services_and_peers_stay_standby():
    snap = snapshot(1.0, [node(1, "a"), node(2, "b")], {"folder_monitor": (1, 4)})
    assert kinds(decide(snap, "a", POLICY), Dispatch) == [Dispatch("folder_monitor", 4)]
    standby = decide(snap, "b", POLICY)
    assert standby.actions == ()
    assert standby.verdict.startswith("standby")


def test_dead_owner_is_marked_inactive_and_its_service_taken_at_the_next_epoch():
    # Given a's last heartbeat was at t=0, and its lease of 3 s has run out at t=3.5
    snap = snapshot(3.5, [node(1, "a", beat=0), node(2, "b", beat=3.4)], {"app_script": (1, 7)})
    decision = decide(snap, "b", POLICY)
    assert kinds(decision, MarkInactive)[0].node == "a"
    (take,) = kinds(decision, Acquire)
    assert (take.service, take.from_node, take.epoch, take.reason) == (
        "app_script",
        "a",
        7,
        "takeover",
    )
    assert "lease expired 0.5 s ago" in take.why


def test_a_fresh_owner_is_never_judged_dead():
    snap = snapshot(2.9, [node(1, "a", beat=0), node(2, "b", beat=2.8)], {"app_script": (1, 7)})
    assert decide(snap, "b", POLICY).actions == ()


def test_a_node_whose_own_lease_lapsed_judges_nobody():
    # Self-fencing: b cannot renew (say its application is unhealthy), so it does nothing
    snap = snapshot(10, [node(1, "a", beat=0), node(2, "b", beat=6)], {"app_script": (1, 1)})
    decision = decide(snap, "b", POLICY)
    assert decision.actions == ()
    assert "own lease expired" in decision.verdict


def test_after_an_outage_a_survivor_waits_one_lease_from_its_own_renewal():
    # Given every lease went stale in an outage, and b renewed at t=100 (a new lease)
    nodes = [node(1, "a", beat=50), node(2, "b", beat=100, since=100)]
    owners = {"folder_monitor": (1, 3)}
    # When b decides within one lease of its own renewal, a still has its chance
    assert kinds(decide(snapshot(102.9, nodes, owners), "b", POLICY), Acquire) == []
    assert kinds(decide(snapshot(102.9, nodes, owners), "b", POLICY), MarkInactive) == []
    # Then only once b has held its lease for a whole lease period is a judged dead
    nodes[1] = node(2, "b", beat=103.0, since=100)
    assert kinds(decide(snapshot(103.1, nodes, owners), "b", POLICY), Acquire)


def test_expired_for_counts_from_the_later_of_peer_beat_and_own_lease_start():
    judge = node(2, "b", since=100)
    assert expired_for(node(1, "a", beat=50), judge, at(102)) is None
    assert expired_for(node(1, "a", beat=50), judge, at(104)) == 1.0


def test_same_region_goes_first_and_other_regions_wait_the_cross_region_delay():
    nodes = [node(1, "a", "r1", beat=0), node(2, "b", "r1", beat=3.3), node(3, "c", "r2", beat=3.3)]
    owners = {"folder_monitor": (1, 1)}
    early = decide(snapshot(3.5, nodes, owners), "c", POLICY)
    assert kinds(early, Acquire) == []
    assert "b placed better" in kinds(early, Wait)[0].why
    late = decide(snapshot(4.1, nodes, owners), "c", POLICY)
    assert kinds(late, Acquire)[0].from_node == "a"
    assert kinds(decide(snapshot(3.5, nodes, owners), "b", POLICY), Acquire)


def test_other_region_takes_at_once_when_the_owners_region_has_no_live_node():
    nodes = [node(1, "a", "r1", beat=0), node(3, "c", "r2", beat=3.3)]
    decision = decide(snapshot(3.5, nodes, {"folder_monitor": (1, 1)}), "c", POLICY)
    assert kinds(decision, Acquire)[0].from_node == "a"


def test_a_draining_node_takes_nothing():
    nodes = [node(1, "a", beat=0), node(2, "b", beat=3.4, draining=True)]
    assert (
        kinds(decide(snapshot(3.5, nodes, {"x": (1, 1), "y": (None, 0)}), "b", POLICY), Acquire)
        == []
    )


def test_a_stopped_owner_counts_as_gone_at_once():
    nodes = [node(1, "a", beat=1.0, stopped_at=at(1.1), is_active=False), node(2, "b", beat=1.0)]
    decision = decide(snapshot(1.2, nodes, {"x": (1, 2)}), "b", POLICY)
    assert "stopped" in kinds(decision, Acquire)[0].why


def test_a_released_service_is_claimed_with_reason_takeover():
    snap = Snapshot(at(1), (node(2, "b", beat=1),), (Service("x", None, 3, reason="release"),))
    (take,) = kinds(decide(snap, "b", POLICY), Acquire)
    assert (take.reason, take.why) == ("takeover", "released by its owner")


def test_refusal_when_another_node_won_the_race():
    nodes = [node(1, "a", beat=0), node(2, "b", beat=3.4), node(3, "c", beat=3.4)]
    snap = snapshot(3.6, nodes, {"x": (3, 8)})
    assert (
        refusal_to_acquire(snap, "b", TAKE_X_FROM_A, POLICY)
        == "already moved: owned by c at epoch 8"
    )


def test_refusal_when_the_owner_came_back():
    snap = snapshot(3.6, [node(1, "a", beat=3.5), node(2, "b", beat=3.4)], {"x": (1, 7)})
    assert "lease is fresh" in refusal_to_acquire(snap, "b", TAKE_X_FROM_A, POLICY)


def test_no_refusal_when_the_plan_still_holds():
    snap = snapshot(3.6, [node(1, "a", beat=0), node(2, "b", beat=3.4)], {"x": (1, 7)})
    assert refusal_to_acquire(snap, "b", TAKE_X_FROM_A, POLICY) is None


def test_a_released_service_waits_for_its_home_region_before_another_claims_it():
    # Given folder_monitor was released 0.2 s ago by an owner of region r1 (its home now)
    released = Service("folder_monitor", None, 4, at(9.8), "release", home_region="r1")
    nodes = (node(1, "b", "r1", beat=9.5), node(2, "c", "r2", beat=9.5))
    snap = Snapshot(at(10.0), nodes, (released,))
    # Then c, in another region, waits while b, in the home region, claims it at once
    assert kinds(decide(snap, "c", POLICY), Wait)
    assert kinds(decide(snap, "b", POLICY), Acquire)
    # And once the cross-region delay has passed with nobody taking it, c may
    later = Snapshot(at(11.0), nodes, (released,))
    assert kinds(decide(later, "c", POLICY), Acquire)


def test_in_a_large_region_only_the_first_two_candidates_go_at_once():
    # Given a dead owner and five live peers of its region
    peers = [node(i, name, beat=9.5) for i, name in enumerate("bcdef", start=2)]
    snap = snapshot(10.0, [node(1, "a", beat=6.5), *peers], {"x": (1, 7)})
    # Then b and c (first by name) take it now; d, e and f wait the cross-region delay
    going = {p.name for p in peers if kinds(decide(snap, p.name, POLICY), Acquire)}
    waiting = {p.name for p in peers if kinds(decide(snap, p.name, POLICY), Wait)}
    assert (going, waiting) == ({"b", "c"}, {"d", "e", "f"})


def test_a_partial_snapshot_never_chooses_a_new_owner():
    # Given a heartbeat's snapshot without every node, in which the owner has expired
    nodes = (node(1, "a", beat=5.0), node(2, "b", beat=9.5))
    partial = Snapshot(at(10.0), nodes, (Service("x", 1, 7),), complete=False)
    # Then the node waits for the whole registry instead of taking the service blind
    decision = decide(partial, "b", POLICY)
    assert not kinds(decision, Acquire) and kinds(decision, Wait)


def handing_over(to: str, since: float, until: float, reason: str = "manual") -> Service:
    return Service(
        "x", 1, 7, handover_to=to, handover_since=at(since), handover_until=at(until),
        handover_reason=reason,
    )  # fmt: skip


def test_a_handover_target_takes_the_service_only_once_the_grace_ended():
    # Given a live owner a handing x over to b, its grace ending at t=30
    nodes = (node(1, "a", beat=10.0), node(2, "b", beat=10.0))
    during = Snapshot(at(11.0), nodes, (handing_over("b", 5.0, 30.0),))
    after = Snapshot(at(31.0), (node(1, "a", beat=30.5), node(2, "b", beat=30.5)), during.services)
    # When b decides during the grace, and after it
    # Then b waits while a's work may finish, then takes x (cutting what still runs)
    assert decide(during, "b", POLICY).actions == ()
    taken = kinds(decide(after, "b", POLICY), Acquire)
    assert [(a.service, a.from_node, a.epoch, a.reason) for a in taken] == [("x", "a", 7, "manual")]
    assert refusal_to_acquire(after, "b", taken[0], POLICY) is None
    assert refusal_to_acquire(during, "b", taken[0], POLICY) is not None
    # And the owner goes on with what it runs meanwhile
    assert decide(after, "a", POLICY).actions == (Dispatch("x", 7),)


def test_a_draining_owner_does_not_ask_again_while_its_service_hands_over():
    nodes = (node(1, "a", beat=10.0, draining=True), node(2, "b", beat=10.0))
    asked = Snapshot(at(11.0), nodes, (handing_over("b", 5.0, 30.0),))
    assert decide(asked, "a", POLICY).actions == (Dispatch("x", 7),)
