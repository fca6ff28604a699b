"""The two built-in services as `SingletonService`s: adapters over `folder_monitor` and
`app_script`, whose public functions do the work."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from workers import app_script, folder_monitor
from workers.fence.fencing import Fence
from workers.queues.routing import HANDLE_FILES, SHARED_QUEUE, TAKEN_RUN
from workers.services.base import Gauge, Row, Section, Sender
from workers.settings import Settings


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def batch_sender(settings: Settings, send: Sender, epoch: int) -> Callable[[str, list[int]], None]:
    """Where handler batches go: run here, in a thread of the owner's worker (no message: a
    far owner saves the publish and the delivery, and its heartbeats never queue behind
    them), or to the shared processing queue, for any node."""
    if settings.folder_dispatch != "shared":
        return lambda folder, ids: send.here(HANDLE_FILES, (folder, ids, epoch))
    expires = max(60.0, settings.lease_timeout * 20)

    def send_batch(folder: str, ids: list[int]) -> None:
        send.to_queue(HANDLE_FILES, (folder, ids, epoch), SHARED_QUEUE, expires)

    return send_batch


def _folder_cells(row: Row) -> tuple[str, ...]:
    return (
        row["folder"],
        row["path"],
        str(row["waiting"]),
        str(row["processing"]),
        str(row["processed_last_hour"]),
        str(row["failed_last_hour"]),
    )


FOLDERS = Section(
    key="folders",
    title="Hot folders",
    columns=("folder", "path", "waiting", "processing", "processed (1 h)", "failed (1 h)"),
    cells=_folder_cells,
    label="folder",
    gauges=(
        Gauge("waiting", "failover_folder_files_waiting", "Files seen, not yet claimed"),
        Gauge("processing", "failover_folder_files_processing", "Files claimed or in processing"),
        Gauge("refused", "failover_folder_files_refused", "Files refused (symlinks, bad names)"),
    ),
)


def folder_summaries(connection: Connection, settings: Settings) -> list[Row]:
    """Per hot folder: files waiting, in processing, and processed or failed in the last hour."""
    recent = "finished_at > now() - interval '1 hour'"
    counts = connection.execute(
        text(
            "SELECT folder, "
            "count(*) FILTER (WHERE state = 'seen') AS waiting, "
            "count(*) FILTER (WHERE state IN ('claimed', 'processing')) AS processing, "
            f"count(*) FILTER (WHERE state = 'processed' AND {recent}) AS processed, "
            f"count(*) FILTER (WHERE state = 'failed' AND {recent}) AS failed, "
            "count(*) FILTER (WHERE state = 'refused') AS refused "
            "FROM folder_file GROUP BY folder"
        )
    )
    by_folder = {row.folder: row for row in counts}
    summaries = []
    for folder in settings.folders():
        row = by_folder.get(folder.name)
        summaries.append(
            {
                "folder": folder.name,
                "path": str(folder.path),
                "waiting": row.waiting if row else 0,
                "processing": row.processing if row else 0,
                "processed_last_hour": row.processed if row else 0,
                "failed_last_hour": row.failed if row else 0,
                "refused": row.refused if row else 0,
            }
        )
    return summaries


class FolderMonitorService:
    """`folder_monitor`: each file dropped in a hot folder is taken exactly once."""

    name = folder_monitor.SERVICE
    section: Section | None = FOLDERS

    def configured(self, settings: Settings) -> bool:
        return bool(settings.folders())

    def check(self, settings: Settings) -> None:
        folder_monitor.check_folders(settings)

    def adopt(self, settings: Settings, fence: Fence) -> None:
        """Part of `scan`: each folder's scan adopts the previous owner's claims."""

    def work(self, settings: Settings, fence: Fence, send: Sender) -> Any:
        if not settings.folders():
            return None
        return folder_monitor.scan(settings, fence, batch_sender(settings, send, fence.epoch))

    def status(self, connection: Connection, settings: Settings) -> list[Row]:
        return folder_summaries(connection, settings)

    def in_flight(self, connection: Connection, settings: Settings) -> list[str] | None:
        return folder_monitor.in_flight(connection, settings)

    def busy_here(self, settings: Settings, incarnation: str) -> bool:
        """Every batch marks its files in the database before it runs."""
        return False


def _script_cells(script: Row) -> tuple[str, ...]:
    last = script["last_run"]
    when = f"{last['started_at']} on {last['node']} ({last['trigger']})" if last else "never"
    result = f"{last['status']} (exit {last['exit_code']})" if last else "-"
    return (
        script["script"],
        script["schedule"] or "on demand",
        when,
        result,
        script["next_due_at"] or "-",
    )


SCRIPTS = Section(
    key="scripts",
    title="Scripts",
    columns=("script", "schedule", "last run", "result", "next due"),
    cells=_script_cells,
    label="script",
)


def script_summaries(connection: Connection, settings: Settings) -> list[Row]:
    """Per script: its schedule, its last run with the result, and the next due time."""
    summaries = []
    for name, script in sorted(settings.scripts.items()):
        last = connection.execute(
            text("SELECT * FROM script_run WHERE script = :n ORDER BY id DESC LIMIT 1"), {"n": name}
        ).first()
        last_due = connection.execute(
            text("SELECT last_due_at FROM script_schedule WHERE script = :n"), {"n": name}
        ).scalar()
        upcoming = app_script.next_due(script, last_due) if last_due else None
        summaries.append(
            {
                "script": name,
                "schedule": f"every {script.interval:g} s" if script.interval else script.cron,
                "last_run": None
                if last is None
                else {
                    "node": last.node,
                    "epoch": last.epoch,
                    "trigger": last.trigger,
                    "status": last.status,
                    "exit_code": last.exit_code,
                    "started_at": _iso(last.started_at),
                    "finished_at": _iso(last.finished_at),
                },
                "next_due_at": _iso(upcoming),
            }
        )
    return summaries


class AppScriptService:
    """`app_script`: allow-listed scripts on a schedule, each slot run once, or on demand."""

    name = app_script.SERVICE
    section: Section | None = SCRIPTS

    def configured(self, settings: Settings) -> bool:
        return bool(settings.scripts)

    def check(self, settings: Settings) -> None:
        app_script.check_scripts(settings)

    def adopt(self, settings: Settings, fence: Fence) -> None:
        """Part of `take_due_runs`: it closes the previous owner's orphaned runs."""

    def work(self, settings: Settings, fence: Fence, send: Sender) -> Any:
        if not settings.scripts:
            return None
        runs = app_script.take_due_runs(settings, fence)
        for name, run_id in runs:
            send.here(TAKEN_RUN, (name, run_id, fence.epoch))
        return [name for name, _ in runs]

    def status(self, connection: Connection, settings: Settings) -> list[Row]:
        return script_summaries(connection, settings)

    def in_flight(self, connection: Connection, settings: Settings) -> list[str] | None:
        return app_script.in_flight(connection)

    def busy_here(self, settings: Settings, incarnation: str) -> bool:
        """Every run is recorded in the database before it starts."""
        return False
