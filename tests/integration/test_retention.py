"""Retention of the ledgers: only finished rows older than the retention go, a bounded batch
at a time, and each owner prunes at most once per period."""

from __future__ import annotations

from sqlalchemy import text

from workers.fence import local_state
from workers.services import app_script, folder_monitor, registry
from workers.services.custom import CustomService
from workers.settings.process import new_incarnation
from workers.stores.database import transaction

OLD = "clock_timestamp() - interval '31 days'"
RECENT = "clock_timestamp() - interval '29 days'"


def fill(settings) -> None:
    """Files and runs in every state, finished 31 days ago, 29 days ago, or not at all."""
    with transaction(settings) as connection:
        for age, when in (("old", OLD), ("recent", RECENT)):
            connection.execute(
                text(
                    "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, "
                    f"finished_at) SELECT 'inbox', '{age}-' || s || '-' || i, i, i, s, {when} "
                    "FROM unnest(ARRAY['processed', 'failed', 'refused']) AS s, "
                    "generate_series(1, 5) AS i"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO script_run (script, node, epoch, trigger, status, "
                    f"started_at, finished_at) SELECT 'stamp', 'a', 1, 'schedule', s, {when}, "
                    f"{when} FROM unnest(ARRAY['succeeded', 'failed', 'timeout']) AS s, "
                    "generate_series(1, 5) AS i"
                )
            )
        connection.execute(
            text(
                "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, first_seen_at) "
                f"SELECT 'inbox', 'busy-' || s, 1, 1, s, {OLD} "
                "FROM unnest(ARRAY['seen', 'claimed', 'processing']) AS s"
            )
        )
        connection.execute(
            text(
                "INSERT INTO script_run (script, node, epoch, trigger, status, started_at) "
                f"VALUES ('stamp', 'a', 1, 'schedule', 'running', {OLD})"
            )
        )


def names(settings, sql: str) -> set[str]:
    with transaction(settings) as connection:
        return {row[0] for row in connection.execute(text(sql))}


def test_retention_deletes_only_old_finished_rows_a_bounded_batch_at_a_time(settings):
    fill(settings)
    files_before = names(settings, "SELECT rel_path FROM folder_file")
    # Each call deletes at most its limit, oldest finished first
    with transaction(settings) as connection:
        assert folder_monitor.ledger.prune(connection, 30, limit=10) == 10
        assert app_script.ledger.prune(connection, 30, limit=10) == 10
    # Through the interface: the registry prunes each service that keeps a ledger
    files, scripts = folder_monitor.FolderMonitorService(), app_script.AppScriptService()
    billing = CustomService("billing", "team_jobs:bill", None, lambda: None, 10.0)
    with transaction(settings) as connection:
        assert registry.prune_ledger(connection, settings, files, 30) == 5
        assert registry.prune_ledger(connection, settings, scripts, 30) == 5
        assert registry.prune_ledger(connection, settings, billing, 30) == 0
        assert folder_monitor.ledger.prune(connection, 30) == 0
        assert app_script.ledger.prune(connection, 30) == 0
    # Then the old finished rows are gone; the recent ones and those in flight stay
    kept = names(settings, "SELECT rel_path FROM folder_file")
    assert kept == {name for name in files_before if not name.startswith("old-")}
    assert {name for name in kept if name.startswith("busy-")} == {
        "busy-seen",
        "busy-claimed",
        "busy-processing",
    }
    runs = names(
        settings,
        "SELECT status || (finished_at IS NULL OR finished_at > clock_timestamp() "
        "- interval '30 days') FROM script_run",
    )
    assert runs == {"succeededtrue", "failedtrue", "timeouttrue", "runningtrue"}
    assert len(names(settings, "SELECT id FROM script_run")) == 16


def test_each_owner_prunes_at_most_once_per_period():
    incarnation = new_incarnation()
    try:
        assert registry.prune_due(incarnation, "folder_monitor")
        assert not registry.prune_due(incarnation, "folder_monitor")
        assert registry.prune_due(incarnation, "app_script")
        assert registry.prune_due(incarnation, "folder_monitor", every=0.0)
    finally:
        local_state.forget(incarnation)


class Collected:
    """A sender that keeps what a service's work would send (no broker needed here)."""

    node = "a"

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple]] = []

    def to_node(self, task, args, expires) -> None:
        self.sent.append((task, args))

    def to_queue(self, task, args, queue, expires) -> None:
        self.sent.append((task, args))

    def here(self, task, args) -> None:
        self.sent.append((task, args))


def test_the_owners_service_work_prunes_its_own_ledger(settings):
    from tests.support.registry import add_node, give
    from workers import services
    from workers.fence.fencing import Fence

    fill(settings)
    me = add_node(settings, "a", lease=30)
    fence = Fence("app_script", me, give(settings, "app_script", "a"))
    services.run_work(settings, fence, Collected())
    with transaction(settings) as connection:
        runs = connection.execute(text("SELECT count(*) FROM script_run")).scalar_one()
        files = connection.execute(text("SELECT count(*) FROM folder_file")).scalar_one()
    assert runs == 16  # the 15 recent runs and the one still running: the old ones went
    assert files == 33  # another service's ledger is left to its owner
    local_state.forget(me.incarnation)
