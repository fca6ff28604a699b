"""Custom services on real PostgreSQL: their row, their fenced handler, their status."""

from __future__ import annotations

import sys
import textwrap

import pytest
from sqlalchemy import text

from tests.support.registry import add_node, give, owner_and_epoch
from workers import services
from workers.fence import local_state
from workers.fence.fencing import Fence
from workers.queues.routing import CUSTOM_RUN
from workers.settings import ServiceSettings
from workers.stores.database import transaction

SERVICE = "ledger_rollup"
HANDLER = """
from sqlalchemy import text

def roll_up(fence):
    with fence.transaction() as connection:
        connection.execute(
            text("INSERT INTO rollup (node, epoch) VALUES (:n, :e)"),
            {"n": fence.node, "e": fence.epoch},
        )
    return fence.epoch
"""


class TurnSender:
    """Keeps what the service work sends: a custom handler's turn, to its own node only."""

    node = "a"

    def __init__(self):
        self.sent = []

    def to_node(self, task, args, expires):
        self.sent.append((task, args))

    def to_queue(self, *args):
        raise AssertionError("a custom service's turn goes to its own node")

    def here(self, task, args):
        self.sent.append((task, args))


def run_turn(settings, fence: Fence) -> str:
    """What `failover.custom_run` does with the turn: the handler in a child process."""
    return services.services_for(settings)[SERVICE].run(settings, fence)


@pytest.fixture
def custom(settings, tmp_path, monkeypatch):
    """Settings declaring `ledger_rollup` (handler in a module on sys.path), and its table."""
    (tmp_path / "team_rollup.py").write_text(textwrap.dedent(HANDLER))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("team_rollup", None)
    declared = settings.model_copy(
        update={
            "services": {SERVICE: ServiceSettings(handler="team_rollup:roll_up", interval=3600)}
        }
    )
    with transaction(declared) as connection:
        connection.execute(text("CREATE TABLE rollup (node TEXT, epoch BIGINT)"))
        services.declare(connection, declared)
    return declared


def rollups(settings) -> list[tuple[str, int]]:
    with transaction(settings) as connection:
        rows = connection.execute(text("SELECT node, epoch FROM rollup ORDER BY epoch"))
        return [(row.node, row.epoch) for row in rows]


def rejected(settings, node: str) -> int:
    with transaction(settings) as connection:
        return int(
            connection.execute(
                text("SELECT rejected_side_effects FROM server_registry WHERE node_name = :n"),
                {"n": node},
            ).scalar_one()
        )


def test_a_declared_service_gets_an_unowned_row_once(custom):
    assert owner_and_epoch(custom, SERVICE) == (None, 0)
    add_node(custom, "a")
    epoch = give(custom, SERVICE, "a")
    with transaction(custom) as connection:
        services.declare(connection, custom)
        assert SERVICE in services.known_services(connection)
    assert owner_and_epoch(custom, SERVICE) == ("a", epoch)
    assert owner_and_epoch(custom, "folder_monitor") == (None, 0)


def test_the_owner_runs_the_handler_once_per_interval_and_its_write_commits(custom):
    me = add_node(custom, "a")
    epoch = give(custom, SERVICE, "a")
    fence = Fence(SERVICE, me, epoch)
    sender = TurnSender()
    try:
        # The service work sends the handler's turn to the node's own queue, once per interval
        assert services.run_work(custom, fence, sender) == "sent"
        assert sender.sent == [(CUSTOM_RUN, (SERVICE, epoch))]
        assert run_turn(custom, fence) == "done"
        assert services.run_work(custom, fence, sender) is None  # within its interval
    finally:
        local_state.forget(me.incarnation)
    assert rollups(custom) == [("a", epoch)]


def test_a_stale_owners_write_is_refused_counted_once_and_not_applied(custom):
    # Given a owned the service at epoch e, then b took it over
    old = add_node(custom, "a")
    epoch = give(custom, SERVICE, "a")
    add_node(custom, "b")
    give(custom, SERVICE, "b", reason="takeover")
    # When a's handler runs with its fence at epoch e
    fence = Fence(SERVICE, old, epoch)
    try:
        assert run_turn(custom, fence) == "refused"
    finally:
        local_state.forget(old.incarnation)
    # Then nothing was written, and the refusal was counted once (the handler's child logs it)
    assert rollups(custom) == []
    assert rejected(custom, "a") == 1
    assert rejected(custom, "b") == 0


def test_status_shows_the_custom_service_with_its_ticks(custom):
    from workers.fence.fencing import record_ticks
    from workers.operations.status import cluster_status, render

    me = add_node(custom, "a")
    epoch = give(custom, SERVICE, "a")
    assert record_ticks(custom, me, [(SERVICE, epoch)]) == {SERVICE: None}
    with transaction(custom) as connection:
        report = cluster_status(connection, custom)
    [row] = report["custom_services"]
    assert (row["service"], row["handler"], row["interval_s"], row["ticks_at_epoch"]) == (
        SERVICE,
        "team_rollup:roll_up",
        3600.0,
        1,
    )
    assert {s["service"]: s["owner"] for s in report["services"]}[SERVICE] == "a"
    assert report["folders"] == [] and report["scripts"] == []
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(report))
    assert "Custom services" in console.export_text()


def test_metrics_export_the_custom_service_with_the_built_ins(custom):
    from workers.fence.fencing import record_ticks
    from workers.operations.metrics import ClusterCollector

    me = add_node(custom, "a")
    epoch = give(custom, SERVICE, "a")
    for _ in range(3):
        record_ticks(custom, me, [(SERVICE, epoch)])
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in ClusterCollector(custom).collect()
        for sample in family.samples
    }
    assert samples[("failover_custom_service_ticks", (("service", SERVICE),))] == 3
    assert samples[("failover_service_owner", (("node", "a"), ("service", SERVICE)))] == 1
    assert samples[("failover_service_epoch", (("service", SERVICE),))] == epoch
