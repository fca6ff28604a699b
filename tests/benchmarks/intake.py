"""Folder-monitor intake: `python -m tests.benchmarks.intake [--burst N] [--idle N]`.

Measures, on real PostgreSQL and real files (FAILOVER_TEST_DATABASE_URL, else embedded):
- a burst of N files dropped at once, until all are claimed (listed, recorded, claimed
  under the epoch, renamed into processing), and until all are handled by a no-op handler
  (batches on 2 threads, as `folder_parallelism = 2` runs them);
- one scan of a folder holding M files that are all known already (nothing new);
- the floor: a plain loop that lists the folder and renames each file.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from tests.support.registry import add_node, give
from tests.support.servers import fresh_database, start_servers
from workers.fence.fencing import Fence
from workers.services import folder_monitor
from workers.settings import HotFolderSettings, Settings, load_settings


def make_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"file-{i:06}.dat").write_bytes(b"x")


def settings_for(database_url: str, folder: Path, settle: float) -> Settings:
    hot = HotFolderSettings(
        name="bench",
        path=folder,
        handler="workers.services.folder_monitor:accept",
        settle_seconds=settle,
    )
    return load_settings(
        database_url=database_url, database_timeout=30.0, lease_timeout=600.0
    ).model_copy(update={"hot_folders": [hot], "folder_batch_size": 500, "folder_parallelism": 2})


def burst(database_url: str, root: Path, count: int) -> tuple[float, float]:
    folder = root / "burst"
    make_files(folder, count)
    settings = settings_for(database_url, folder, settle=0)
    me = add_node(settings, "bench", lease=600)
    fence = Fence("folder_monitor", me, give(settings, "folder_monitor", "bench"))
    hot = settings.folders()[0]
    batches: list[list[int]] = []
    started = time.perf_counter()
    folder_monitor.scan(settings, fence, lambda name, ids: batches.append(ids))
    claimed = time.perf_counter() - started
    with ThreadPoolExecutor(max_workers=2) as pool:
        while batches:
            current, batches[:] = list(batches), []
            list(
                pool.map(
                    lambda ids: folder_monitor.handle_files(settings, hot, ids, fence), current
                )
            )
            folder_monitor.dispatch(settings, hot, fence, lambda name, ids: batches.append(ids))
    handled = time.perf_counter() - started
    assert len(list((folder / "processed").iterdir())) == count
    return claimed, handled


def idle_scan(database_url: str, root: Path, count: int) -> float:
    folder = root / "idle"
    make_files(folder, count)
    settings = settings_for(database_url, folder, settle=3600)
    me = add_node(settings, "idle", lease=600)
    fence = Fence("folder_monitor", me, give(settings, "folder_monitor", "idle"))
    folder_monitor.scan(settings, fence, lambda name, ids: None)  # first sight: all recorded
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        folder_monitor.scan(settings, fence, lambda name, ids: None)
        best = min(best, time.perf_counter() - started)
    return best


def floor(root: Path, count: int) -> float:
    folder, target = root / "floor", root / "floor-moved"
    make_files(folder, count)
    target.mkdir()
    started = time.perf_counter()
    with os.scandir(folder) as entries:
        for entry in entries:
            os.rename(entry.path, target / entry.name)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--idle", type=int, default=100_000)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(stack)
        root = Path(tmp)
        with fresh_database(servers) as url:
            claimed, handled = burst(url, root, args.burst)
        with fresh_database(servers) as url:
            idle = idle_scan(url, root, args.idle)
        moved = floor(root, args.burst)
    print()
    print("| measure | files | seconds | files/s |")
    print("| --- | --- | --- | --- |")
    print(f"| burst: all claimed | {args.burst} | {claimed:.2f} | {args.burst / claimed:,.0f} |")
    print(
        f"| burst: all handled (no-op handler) | {args.burst} | {handled:.2f} | {args.burst / handled:,.0f} |"
    )
    print(
        f"| floor: list + rename each file | {args.burst} | {moved:.2f} | {args.burst / moved:,.0f} |"
    )
    print(f"| idle scan, nothing new | {args.idle} | {idle:.3f} | - |")


if __name__ == "__main__":
    main()
