"""The folder monitor as a `SingletonService`, and the body of its Celery task.

This is all the node knows of the folder monitor: the adapter the registry runs at each
beat (a scan of every folder, whose batches go where `batch_sender` says), its rows in
`failover status`, the pruning of its ledger, and `handle_batch`, what the
`failover.handle_files` task does (`workers.runtime.tasks` only wraps it for Celery).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from workers.errors import ConfigError, HandingOver, StaleEpoch
from workers.fence.fencing import Fence
from workers.queues.routing import HANDLE_FILES, SHARED_QUEUE, expired
from workers.services.base import Gauge, HandOver, Row, Section, Sender
from workers.services.folder_monitor import ledger
from workers.services.folder_monitor.batch import handle_files
from workers.services.folder_monitor.handler import load_handler
from workers.services.folder_monitor.intake import dispatch, folder_named, scan
from workers.settings import HotFolderSettings, Settings, timing
from workers.settings.process import Identity

SERVICE = "folder_monitor"


def batch_sender(settings: Settings, send: Sender, epoch: int) -> Callable[[str, list[int]], None]:
    """Where handler batches go: run here, in a thread of the owner's worker (no message: a
    far owner saves the publish and the delivery, and its heartbeats never queue behind
    them), or to the shared processing queue, for any node."""
    if settings.folder_dispatch != "shared":
        return lambda folder, ids: send.here(HANDLE_FILES, (folder, ids, epoch))
    expires = timing.shared_batch_expiry(settings)

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


def check_folders(settings: Settings) -> None:
    """At node start: every folder exists, its processed and failed folders are on its
    filesystem (a rename must be atomic), and every handler imports (one line if not)."""
    for folder in settings.folders():
        if not folder.path.is_dir():
            raise ConfigError(f"hot folder {folder.name}: {folder.path} is not a directory")
        device = folder.path.stat().st_dev
        for kind, directory in (("processed_dir", folder.processed), ("failed_dir", folder.failed)):
            directory.mkdir(parents=True, exist_ok=True)
            if directory.stat().st_dev != device:
                raise ConfigError(
                    f"hot folder {folder.name}: {kind} {directory} is on another filesystem "
                    f"than {folder.path} (files are moved by an atomic rename)"
                )
        if folder.handler:
            load_handler(folder.handler)


class FolderMonitorService:
    """`folder_monitor`: each file dropped in a hot folder is taken exactly once."""

    name = SERVICE
    section: Section | None = FOLDERS

    def configured(self, settings: Settings) -> bool:
        return bool(settings.folders())

    def check(self, settings: Settings) -> None:
        check_folders(settings)

    def adopt(self, settings: Settings, fence: Fence) -> None:
        """Part of `scan`: each folder's scan adopts the previous owner's claims."""

    def work(self, settings: Settings, fence: Fence, send: Sender) -> Any:
        if not settings.folders():
            return None
        return scan(settings, fence, batch_sender(settings, send, fence.epoch))

    def status(self, connection: Connection, settings: Settings) -> list[Row]:
        return ledger.summaries(connection, settings)

    def in_flight(self, connection: Connection, settings: Settings) -> list[str] | None:
        return ledger.in_flight(connection, settings)

    def busy_here(self, settings: Settings, incarnation: str) -> bool:
        """Every batch marks its files in the database before it runs."""
        return False

    def prune(self, connection: Connection, settings: Settings, days: float, limit: int) -> int:
        """Files processed, failed or refused more than `days` days ago (open ones stay)."""
        return ledger.prune(connection, days, limit)


def handle_batch(
    settings: Settings,
    me: Identity,
    folder: str,
    ids: list[int],
    epoch: int,
    send: Sender,
    hand_over: HandOver,
) -> int:
    """`failover.handle_files`: run the folder's handler on a batch of claimed files, then
    (on the owner's own worker) send the folder's next batches."""
    if expired(settings, me):
        return 0
    shared = settings.folder_dispatch == "shared"
    fence = Fence(SERVICE, me, epoch, owner_only=not shared)
    hot_folder = folder_named(settings, folder)
    handled = handle_files(settings, hot_folder, ids, fence)
    if not shared:
        with contextlib.suppress(StaleEpoch):
            _next_batches(settings, hot_folder, fence.to_start(), send, hand_over)
    return handled


def _next_batches(
    settings: Settings, folder: HotFolderSettings, fence: Fence, send: Sender, hand_over: HandOver
) -> None:
    """After a batch, send the folder's next ones; if the service is handing over, hand it
    over as soon as this was the last of its running work."""
    try:
        dispatch(settings, folder, fence, batch_sender(settings, send, fence.epoch))
    except HandingOver:
        hand_over(settings, fence)
