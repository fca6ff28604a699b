"""Placement: preferences, failback with dwell and window, manual-move refusals, draining."""

from __future__ import annotations

from datetime import time

from tests.unit.test_decide import at, kinds, node, snapshot
from workers.decision.decide import (
    Acquire,
    Dispatch,
    Handover,
    Policy,
    Wait,
    decide,
    refusal_to_acquire,
)
from workers.decision.placement import Placement, best_candidate, failback_refusal, move_refusal

PREFER_A = Placement(preferred_nodes=("a",), failback=True, failback_dwell=10.0)


def policy(placement: Placement) -> Policy:
    return Policy(cross_region_delay=1.0, placements={"x": placement})


def test_preferences_rank_nodes_then_regions_then_the_home_region():
    nodes = [
        node(1, "a", "r2"),
        node(2, "b", "r1"),
        node(3, "c", "r3"),
        node(9, "z", "r1", beat=-10),
    ]
    snap = snapshot(1, nodes, {"x": (9, 1)})
    assert best_candidate(snap, "x", Placement()).name == "b"  # the dead owner's region
    assert best_candidate(snap, "x", Placement(preferred_regions=("r3",))).name == "c"
    assert best_candidate(snap, "x", Placement(preferred_nodes=("a",))).name == "a"


def test_best_candidate_skips_draining_unhealthy_and_dead_nodes():
    nodes = [
        node(1, "a", draining=True),
        node(2, "b", app_healthy=False),
        node(3, "c", beat=-10),
        node(4, "d"),
        node(5, "owner"),
    ]
    assert best_candidate(snapshot(1, nodes, {"x": (5, 1)}), "x", Placement()).name == "d"


def test_failback_window_may_wrap_midnight():
    night = Placement(failback=True, failback_window=(time(22, 0), time(4, 0)))
    assert night.in_window(at(0).replace(hour=23))
    assert night.in_window(at(0).replace(hour=3))
    assert not night.in_window(at(0).replace(hour=12))


def test_move_refusals_say_why():
    nodes = [
        node(1, "a"),
        node(2, "b", stopped_at=at(0), is_active=False),
        node(3, "c", beat=-10),
        node(4, "d", draining=True),
        node(5, "e", app_healthy=False),
        node(6, "f"),
    ]
    snap = snapshot(1, nodes, {"x": (1, 3)})
    assert move_refusal(snap, "a", "x") == "a already owns x (epoch 3)"
    assert move_refusal(snap, "b", "x") == "b is stopped"
    assert "not live" in move_refusal(snap, "c", "x")
    assert move_refusal(snap, "d", "x") == "d is draining"
    assert "health check" in move_refusal(snap, "e", "x")
    assert move_refusal(snap, "zz", "x") == "unknown node zz"
    assert move_refusal(snap, "f", "y") == "unknown service y"
    assert move_refusal(snap, "f", "x") is None


def test_a_returning_preferred_node_fails_back_only_after_the_dwell():
    # Given b holds x, and preferred a has held an unbroken lease since t=95
    nodes = [node(1, "a", beat=99.5, since=95), node(2, "b", beat=99.5)]
    early = snapshot(100, nodes, {"x": (2, 4)})
    assert "dwell" in failback_refusal(early, nodes[0], "x", PREFER_A)
    assert kinds(decide(early, "a", policy(PREFER_A)), Acquire) == []
    # When the dwell has passed
    later = snapshot(
        105.5, [node(1, "a", beat=105, since=95), node(2, "b", beat=105)], {"x": (2, 4)}
    )
    (take,) = kinds(decide(later, "a", policy(PREFER_A)), Acquire)
    # Then a takes x back from the live b, with reason failback, re-checked under the lock
    assert (take.from_node, take.reason) == ("b", "failback")
    assert refusal_to_acquire(later, "a", take, policy(PREFER_A)) is None


def test_no_failback_when_off_outside_the_window_or_for_a_less_preferred_node():
    nodes = [
        node(1, "a", beat=200, since=0),
        node(2, "b", beat=200),
        node(3, "c", beat=200, since=0),
    ]
    snap = snapshot(200.5, nodes, {"x": (2, 4)})
    assert (
        failback_refusal(snap, nodes[0], "x", Placement(preferred_nodes=("a",)))
        == "failback is off"
    )
    closed = Placement(
        preferred_nodes=("a",), failback=True, failback_dwell=1, failback_window=(time(1), time(2))
    )
    assert failback_refusal(snap, nodes[0], "x", closed) == "outside the failback window"
    assert "not preferred" in failback_refusal(snap, nodes[2], "x", PREFER_A)
    assert kinds(decide(snap, "c", policy(PREFER_A)), Acquire) == []


def test_a_flapping_preferred_node_restarts_its_dwell():
    # a came back at t=100 after a restart: its unbroken lease is young again
    nodes = [node(1, "a", beat=103, since=100), node(2, "b", beat=103)]
    assert (
        kinds(decide(snapshot(103.5, nodes, {"x": (2, 4)}), "a", policy(PREFER_A)), Acquire) == []
    )


def test_a_draining_owner_hands_each_service_to_the_best_candidate():
    nodes = [node(1, "a", draining=True), node(2, "b", "r2"), node(3, "c")]
    decision = decide(snapshot(1, nodes, {"x": (1, 5)}), "a", Policy())
    assert kinds(decision, Handover) == [Handover("x", 5, "c")]


def test_a_draining_owner_with_nowhere_to_go_keeps_serving():
    decision = decide(snapshot(1, [node(1, "a", draining=True)], {"x": (1, 5)}), "a", Policy())
    assert kinds(decision, Dispatch) == [Dispatch("x", 5)]


def test_an_unowned_service_waits_briefly_for_its_preferred_node():
    nodes = [node(1, "a", since=0.5), node(2, "b", since=0.5)]
    decision = decide(snapshot(1, nodes, {"x": (None, 0)}), "b", policy(PREFER_A))
    assert "a placed better" in kinds(decision, Wait)[0].why
    assert kinds(decide(snapshot(1, nodes, {"x": (None, 0)}), "a", policy(PREFER_A)), Acquire)
