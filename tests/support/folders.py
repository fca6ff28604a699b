"""Hot folders driven in process on a real database: one owner, its scans and its batches."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from tests.support.registry import add_node, give
from workers.fence.fencing import Fence
from workers.services import folder_monitor
from workers.settings import HotFolderSettings, Settings
from workers.stores.database import transaction

SERVICE = "folder_monitor"


def with_folder(settings: Settings, path: Path, **options) -> Settings:
    folder = HotFolderSettings(
        name="inbox",
        path=path,
        **{"handler": "tests.support.handlers:record", "settle_seconds": 0, **options},
    )
    return settings.model_copy(update={"hot_folders": [folder]})


def owner(settings: Settings, name: str = "a", lease: float = 1.5) -> Fence:
    """Register `name` and make it the owner of the folder monitor; its fence."""
    me = add_node(settings, name, lease=lease)
    return Fence(SERVICE, me, give(settings, SERVICE, name))


def scan(settings: Settings, fence: Fence) -> list[list[int]]:
    """One scan of every folder; the batches it dispatched."""
    batches: list[list[int]] = []
    folder_monitor.scan(settings, fence, lambda name, ids: batches.append(ids))
    return batches


def run_until_idle(settings: Settings, fence: Fence) -> None:
    """Scan, then run every dispatched batch, until nothing is left to do."""
    folder = settings.folders()[0]
    for _ in range(20):
        batches = scan(settings, fence)
        for ids in batches:
            folder_monitor.handle_files(settings, folder, ids, fence)
        if not batches:
            return


def ledger(settings: Settings) -> list:
    with transaction(settings) as connection:
        return list(connection.execute(text("SELECT * FROM folder_file ORDER BY id")))
