"""Invariant 5 on real PostgreSQL: side effects commit only under the owner's current epoch."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from tests.support.registry import add_node, give
from workers.decision.decide import Acquire, Policy
from workers.errors import StaleEpoch
from workers.fence.fencing import Fence, fenced, record_ticks, run_fenced
from workers.settings.process import Identity, new_incarnation
from workers.stores import ownership
from workers.stores.database import transaction

SERVICE = "app_script"


def record_tick(connection, fence: Fence) -> int:
    """A side effect to fence: count a tick against (service, epoch)."""
    return connection.execute(
        text(
            "INSERT INTO service_tick (service_type, epoch, node_name, tick_count) "
            "VALUES (:s, :e, :n, 1) ON CONFLICT (service_type, epoch) "
            "DO UPDATE SET tick_count = service_tick.tick_count + 1 RETURNING tick_count"
        ),
        {"s": fence.service, "e": fence.epoch, "n": fence.me.name},
    ).scalar_one()


def ticks(settings, epoch: int) -> int:
    with transaction(settings) as connection:
        count = connection.execute(
            text("SELECT tick_count FROM service_tick WHERE service_type = :s AND epoch = :e"),
            {"s": SERVICE, "e": epoch},
        ).scalar()
    return int(count or 0)


def test_the_owner_at_its_epoch_commits(settings):
    me = add_node(settings, "a")
    epoch = give(settings, SERVICE, "a")
    fence = Fence(SERVICE, me, epoch)
    assert run_fenced(settings, fence, lambda c: record_tick(c, fence)) == 1
    assert run_fenced(settings, fence, lambda c: record_tick(c, fence)) == 2
    assert ticks(settings, epoch) == 2


def test_a_stale_epoch_is_rejected_and_nothing_is_written(settings, caplog):
    # Given a owned the service at epoch e, then b took it over (epoch e + 1)
    old = add_node(settings, "a")
    epoch = give(settings, SERVICE, "a")
    add_node(settings, "b")
    give(settings, SERVICE, "b", reason="takeover")
    # When a's task, dispatched at epoch e, tries its side effect
    fence = Fence(SERVICE, old, epoch)
    result = run_fenced(settings, fence, lambda c: record_tick(c, fence))
    # Then it is rejected and logged, and no tick is counted for epoch e
    assert result is None
    assert ticks(settings, epoch) == 0
    assert "rejected stale work on app_script" in caplog.text
    assert "owner b, epoch" in caplog.text


def test_the_owner_with_an_expired_lease_is_rejected(settings):
    me = add_node(settings, "a", beat_age=10)
    epoch = give(settings, SERVICE, "a")
    with pytest.raises(StaleEpoch), fenced(settings, Fence(SERVICE, me, epoch)):
        pass


def test_a_previous_incarnation_of_the_owner_is_rejected(settings):
    add_node(settings, "a")
    epoch = give(settings, SERVICE, "a")
    ghost = Identity("a", new_incarnation())
    with pytest.raises(StaleEpoch), fenced(settings, Fence(SERVICE, ghost, epoch)):
        pass


def test_a_takeover_waits_for_an_open_side_effect_and_then_wins(settings):
    # Given a's fenced transaction is open (its lease just expired while it worked)
    owner = add_node(settings, "a")
    epoch = give(settings, SERVICE, "a")
    taker = add_node(settings, "b")
    released = threading.Event()
    refusal: list[str | None] = []

    def take_over() -> None:
        action = Acquire(SERVICE, "a", epoch, "takeover", "lease expired")
        with transaction(settings.model_copy(update={"database_timeout": 5.0})) as connection:
            refusal.append(ownership.acquire(connection, taker, action, "node b", Policy()))
        released.set()

    with fenced(settings, Fence(SERVICE, owner, epoch)) as connection:
        record_tick(connection, Fence(SERVICE, owner, epoch))
        with transaction(settings) as other:
            other.execute(
                text(
                    "UPDATE server_registry SET last_heartbeat_at = clock_timestamp() - "
                    "interval '1 minute' WHERE node_name = 'a'"
                )
            )
        thread = threading.Thread(target=take_over)
        thread.start()
        # Then the takeover cannot get the row while the side effect is uncommitted
        assert not released.wait(0.5)
    thread.join(10)
    # and it goes through once the side effect committed: the two never interleave
    assert refusal == [None]
    assert ticks(settings, epoch) == 1


def test_rejections_are_counted_per_node_for_metrics(settings):
    old = add_node(settings, "a")
    epoch = give(settings, SERVICE, "a")
    add_node(settings, "b")
    give(settings, SERVICE, "b", reason="takeover")
    fence = Fence(SERVICE, old, epoch)
    for _ in range(3):
        run_fenced(settings, fence, lambda c: record_tick(c, fence))
    with transaction(settings) as connection:
        counted = connection.execute(
            text("SELECT rejected_side_effects FROM server_registry WHERE node_name = 'a'")
        ).scalar_one()
    assert counted == 3


def test_one_statement_fences_and_ticks_every_owned_service(settings):
    # Given a owns app_script, and b took folder_monitor from it (a still believes epoch 1)
    me = add_node(settings, "a")
    mine = give(settings, SERVICE, "a")
    lost = give(settings, "folder_monitor", "a")
    add_node(settings, "b")
    give(settings, "folder_monitor", "b", reason="takeover")
    # When a's service work fences and ticks both in one statement
    outcome = record_ticks(settings, me, [(SERVICE, mine), ("folder_monitor", lost)])
    # Then the one it holds is ticked, the other refused, naming the real owner
    assert outcome[SERVICE] is None and ticks(settings, mine) == 1
    assert "owner b, epoch 2" in str(outcome["folder_monitor"])


def test_one_statement_ticks_nothing_once_the_lease_has_run_out(settings):
    me = add_node(settings, "a", beat_age=60)
    epoch = give(settings, SERVICE, "a")
    outcome = record_ticks(settings, me, [(SERVICE, epoch)])
    assert outcome[SERVICE] is not None and ticks(settings, epoch) == 0
