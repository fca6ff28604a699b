"""The periodic ledger queries at a million rows per ledger, before and after revision 0006.

For each schema revision asked for, a database of its own is filled (generate_series) with
`--rows` rows in `folder_file` (nearly all processed over 60 days, a few waiting and in
processing) and in `script_run` (ten scripts, all finished but one running run each), and
each periodic query of the folder monitor and the script runner, and each retention call,
runs `--repeat` times in a transaction that is rolled back. Prints the median per query:

    python -m tests.benchmarks.ledger [--rows 1000000] [--repeat 20] [--revisions head]

Today's queries need the columns of revision 0007 on (`dev`, `inode`), so an older revision
is only worth asking for with the code of its time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text

from tests.support.servers import fresh_database, start_servers
from workers.fence.fencing import Fence
from workers.services import app_script, folder_monitor
from workers.settings import HotFolderSettings, Settings, load_settings
from workers.settings.process import Identity, new_incarnation

FOLDER = "bench"
INCARNATION = new_incarnation()
"""The benchmark's own incarnation: a UUID, as the ledgers' `handler` and `incarnation` are."""
SCRIPTS = 10
ACTIVE = 200
EPOCH = 3


def fill(connection: Connection, rows: int) -> None:
    """`rows` files and `rows` script runs, finished over the last 60 days, a few in flight."""
    connection.execute(
        text(
            "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, epoch, node, "
            "attempts, first_seen_at, claimed_at, finished_at) "
            "SELECT :folder, 'file-' || i, i, i, "
            "CASE WHEN i % 1000 = 0 THEN 'failed' ELSE 'processed' END, 1, 'a', 1, "
            "t, t, t FROM (SELECT i, clock_timestamp() - (i * 5184000.0 / :rows) "
            "* interval '1 second' AS t FROM generate_series(1, :rows) AS i) AS g"
        ),
        {"folder": FOLDER, "rows": rows},
    )
    connection.execute(
        text(
            "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, epoch, node, "
            "first_seen_at, claimed_at, dispatched_at) "
            "SELECT :folder, 'active-' || i, i, i, "
            "CASE WHEN i % 2 = 0 THEN 'seen' ELSE 'processing' END, "
            "CASE WHEN i % 2 = 0 THEN NULL ELSE :epoch - (i % 4) / 3 END, 'a', "
            "clock_timestamp() - interval '1 minute', clock_timestamp(), "
            "CASE WHEN i % 3 = 0 THEN clock_timestamp() END "
            "FROM generate_series(1, :active) AS i"
        ),
        {"folder": FOLDER, "active": ACTIVE, "epoch": EPOCH},
    )
    connection.execute(
        text(
            "INSERT INTO script_run (script, node, epoch, trigger, started_at, finished_at, "
            "status, exit_code) SELECT 'script-' || (i % :scripts), 'a', 1, 'schedule', t, t, "
            "'succeeded', 0 FROM (SELECT i, clock_timestamp() - (i * 5184000.0 / :rows) "
            "* interval '1 second' AS t FROM generate_series(1, :rows) AS i) AS g"
        ),
        {"rows": rows, "scripts": SCRIPTS},
    )
    connection.execute(
        text(
            "INSERT INTO script_run (script, node, epoch, trigger, status) "
            "SELECT 'script-' || i, 'a', :epoch, 'schedule', 'running' "
            "FROM generate_series(0, :scripts - 1) AS i"
        ),
        {"scripts": SCRIPTS, "epoch": EPOCH},
    )


def queries(
    settings: Settings, folder: HotFolderSettings
) -> dict[str, Callable[[Connection], Any]]:
    """Each periodic query, as the services run it (their own functions), by name."""
    fence = Fence(folder_monitor.SERVICE, Identity("a", INCARNATION), EPOCH)
    scripts = Fence(app_script.SERVICE, Identity("a", INCARNATION), EPOCH + 1)
    days = settings.ledger_retention_days
    return {
        "claim_settled (folder monitor, each beat)": lambda c: folder_monitor.ledger.claim_settled(
            c, folder, fence
        ),
        "take_batches (folder monitor, each beat)": lambda c: folder_monitor.ledger.take_batches(
            c, folder, settings, fence
        ),
        "adopt_orphans (folder monitor, each beat)": lambda c: folder_monitor.ledger.adopt_orphans(
            c, folder, fence
        ),
        "sweep_processing (100 ids, each scan)": lambda c: folder_monitor.areas.sweep_processing(
            c, folder, fence
        ),
        "_running (script runner, per script per beat)": lambda c: app_script.ledger.running(
            c, "script-1", scripts, 600.0
        ),
        "close_orphans (script runner, per script per beat)": lambda c: (
            app_script.ledger.close_orphans(c, scripts)
        ),
        "prune_folder_files (10,000 rows, hourly)": lambda c: folder_monitor.ledger.prune(c, days),
        "prune_script_runs (10,000 rows, hourly)": lambda c: app_script.ledger.prune(c, days),
    }


def timed(database_url: str, run: Callable[[Connection], Any], repeat: int) -> float:
    """The median milliseconds of `run`, each time in a transaction rolled back."""
    engine = create_engine(database_url)
    times = []
    try:
        with engine.connect() as connection:
            for _ in range(repeat):
                started = time.perf_counter()
                run(connection)
                times.append((time.perf_counter() - started) * 1000)
                connection.rollback()
    finally:
        engine.dispose()
    return statistics.median(times)


def measure(database_url: str, rows: int, repeat: int, root: Path) -> dict[str, float]:
    folder = HotFolderSettings(
        name=FOLDER, path=root, handler="workers.services.folder_monitor:accept", settle_seconds=1.0
    )
    processing = folder.processing
    processing.mkdir(parents=True, exist_ok=True)
    for file_id in range(rows // 2, rows // 2 + 100):
        (processing / f"{file_id}__file-{file_id}").write_text("x")
    settings = load_settings(database_url=database_url)
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            fill(connection, rows)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE folder_file"))
            connection.execute(text("VACUUM ANALYZE script_run"))
    finally:
        engine.dispose()
    return {
        name: timed(database_url, run, repeat) for name, run in queries(settings, folder).items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--revisions", nargs="+", default=["head"])
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with ExitStack() as stack:
        servers = start_servers(stack)
        for revision in args.revisions:
            with fresh_database(servers, revision) as url:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                results[revision] = measure(url, args.rows, args.repeat, root)
    header = " | ".join(f"revision {r} (median ms)" for r in args.revisions)
    print(f"{args.rows:,} rows per ledger, median of {args.repeat} runs\n")
    print(f"| query | {header} |")
    print("| --- |" + " --- |" * len(args.revisions))
    for name in results[args.revisions[0]]:
        cells = " | ".join(f"{results[r][name]:.2f}" for r in args.revisions)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
