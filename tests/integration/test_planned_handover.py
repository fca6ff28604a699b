"""A planned handover in the database: marked, shown, fenced, finished (issue 17)."""

from __future__ import annotations

import io

from rich.console import Console
from sqlalchemy import text

from tests.support.registry import add_node, give, owner_and_epoch
from workers import services
from workers.errors import HandingOver
from workers.fence.fencing import Fence, fenced
from workers.operations.metrics import ClusterCollector
from workers.operations.status import cluster_status, render
from workers.stores import ownership
from workers.stores.database import transaction


def start_run(settings, me, epoch: int) -> int:
    with transaction(settings) as connection:
        return int(
            connection.execute(
                text(
                    "INSERT INTO script_run (script, node, incarnation, epoch, trigger, status) "
                    "VALUES ('tick', :node, :me, :epoch, 'manual', 'running') RETURNING id"
                ),
                {"node": me.name, "me": me.incarnation, "epoch": epoch},
            ).scalar_one()
        )


def end_run(settings, run: int) -> None:
    with transaction(settings) as connection:
        connection.execute(
            text("UPDATE script_run SET status = 'succeeded', finished_at = now() WHERE id = :id"),
            {"id": run},
        )


def test_a_move_waits_for_the_owner_s_running_script_then_hands_over_cutting_nothing(settings):
    # Given a owns app_script and runs a script; b is live
    a = add_node(settings, "a", beat_age=0.0)
    b = add_node(settings, "b", beat_age=0.0)
    epoch = give(settings, "app_script", "a")
    run = start_run(settings, a, epoch)
    running = services.running_work(settings, "app_script")
    # When b is asked to take it (a move)
    with transaction(settings) as connection:
        refusal, handing = ownership.move_here(
            connection, b, "app_script", "ops", "try b", ownership.Grace(30.0, running)
        )
    # Then the service is marked as handing over, not moved, and says what still runs
    assert refusal is None and not handing.moved
    assert handing.running == (f"tick (run {run})",)
    assert owner_and_epoch(settings, "app_script") == ("a", epoch)
    with transaction(settings) as connection:
        report = cluster_status(connection, settings)
    shown = next(s for s in report["services"] if s["service"] == "app_script")["handover"]
    assert shown["from"] == "a" and shown["to"] == "b" and shown["running"] == list(handing.running)
    assert 0 < shown["left_s"] <= 30
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(render(report))
    assert "handing over to b: 1 running" in console.export_text()
    scraped = {m.name: m for m in ClusterCollector(settings).collect()}
    assert [s.value for s in scraped["failover_service_handover_running"].samples] == [1]
    # And a may not start new work for it, while what runs goes on under the plain fence
    fence = Fence("app_script", a, epoch)
    try:
        with fenced(settings, fence.to_start()):
            raise AssertionError("new work started during a handover")
    except HandingOver:
        pass
    with fenced(settings, fence):
        pass
    # And a hands it over only once its run ended, at the next epoch, cutting nothing
    with transaction(settings) as connection:
        assert ownership.finish_handover(connection, a, "app_script", running) is None
    end_run(settings, run)
    with transaction(settings) as connection:
        finished = ownership.finish_handover(connection, a, "app_script", running)
    assert finished is not None and finished.to is not None and finished.to.name == "b"
    assert owner_and_epoch(settings, "app_script") == ("b", epoch + 1)
    with transaction(settings) as connection:
        row = connection.execute(
            text(
                "SELECT reason, actor, handover_waited_s, handover_cut FROM ownership_history "
                "WHERE service_type = 'app_script' AND epoch = :e"
            ),
            {"e": epoch + 1},
        ).one()
        left = connection.execute(
            text("SELECT handover_since FROM service_status WHERE service_type = 'app_script'")
        ).scalar()
    assert (row.reason, row.actor, row.handover_cut) == ("manual", "ops", 0)
    assert row.handover_waited_s > 0 and left is None


def test_a_move_with_nothing_running_or_with_no_grace_moves_at_once(settings):
    a = add_node(settings, "a", beat_age=0.0)
    b = add_node(settings, "b", beat_age=0.0)
    epoch = give(settings, "app_script", "a")
    running = services.running_work(settings, "app_script")
    with transaction(settings) as connection:
        _refusal, idle = ownership.move_here(
            connection, b, "app_script", "ops", "idle", ownership.Grace(30.0, running)
        )
    assert idle.moved and owner_and_epoch(settings, "app_script") == ("b", epoch + 1)
    start_run(settings, b, epoch + 1)
    with transaction(settings) as connection:
        _refusal, now = ownership.move_here(
            connection, a, "app_script", "ops", "--now", ownership.Grace(0.0, running)
        )
        cut = connection.execute(
            text("SELECT handover_cut FROM ownership_history ORDER BY id DESC LIMIT 1")
        ).scalar()
    assert now.moved and cut == 1
