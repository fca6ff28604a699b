"""Custom services on real PostgreSQL: their row, their fenced handler, their status."""

from __future__ import annotations

import sys
import textwrap

import pytest
from sqlalchemy import text

from tests.support.registry import add_node, give, owner_and_epoch
from workers import local_state, services
from workers.database import transaction
from workers.errors import StaleEpoch
from workers.fencing import Fence, reject
from workers.settings import ServiceSettings

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


class NoSender:
    node = "a"

    def to_node(self, *args):
        raise AssertionError("a custom handler sends nothing here")

    def to_queue(self, *args):
        raise AssertionError("a custom handler sends nothing here")


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
    try:
        assert services.run_work(custom, fence, NoSender()) == epoch
        assert services.run_work(custom, fence, NoSender()) is None  # within its interval
    finally:
        local_state.forget(me.incarnation)
    assert rollups(custom) == [("a", epoch)]


def test_a_stale_owners_write_is_refused_counted_once_and_not_applied(custom, caplog):
    # Given a owned the service at epoch e, then b took it over
    old = add_node(custom, "a")
    epoch = give(custom, SERVICE, "a")
    add_node(custom, "b")
    give(custom, SERVICE, "b", reason="takeover")
    # When a's handler runs with its fence at epoch e
    fence = Fence(SERVICE, old, epoch)
    try:
        with pytest.raises(StaleEpoch) as refusal:
            services.run_work(custom, fence, NoSender())
        reject(custom, fence, refusal.value)  # the task's own catch: not a second count
    finally:
        local_state.forget(old.incarnation)
    # Then nothing was written, and the refusal was logged and counted once
    assert rollups(custom) == []
    assert rejected(custom, "a") == 1
    assert rejected(custom, "b") == 0
    lines = [
        r.message for r in caplog.records if "rejected stale work on ledger_rollup" in r.message
    ]
    assert len(lines) == 1 and "owner b" in lines[0]


def test_status_shows_the_custom_service_with_its_ticks(custom):
    from workers.fencing import record_ticks
    from workers.status import cluster_status, render

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
    from workers.fencing import record_ticks
    from workers.metrics import ClusterCollector

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
