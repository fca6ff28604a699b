"""The folder monitor: picks up each file dropped in a hot folder exactly once.

A scan (on the owner of `folder_monitor`, at every heartbeat) lists each folder with
`os.scandir` (inotify does not fire on NFS or SMB) and, in one fenced transaction per
folder, records every arrival (folder, name, size, mtime) as `seen` and claims those that
have stayed the same for the folder's settle time: `INSERT ... ON CONFLICT DO NOTHING` on
the arrival's unique key, then one `UPDATE` to `processing` under the owner's epoch. Only
then is each claimed file renamed into the folder's processing area (same filesystem, so
atomic). Handlers run in batches of files (`handle_files`), at most `folder_parallelism`
batches at once; each file ends in `processed/` or, after `max_attempts`, in `failed/` with
the error in the ledger. A node that lost ownership claims nothing and starts no handler.

Every file is at any time in the hot folder, in processing under a live claim, processed,
or failed: a new owner adopts the claims of a dead one (the ledger counts the attempts).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import logging
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection, text

from workers import store
from workers.database import transaction
from workers.errors import ConfigError, StaleEpoch
from workers.fencing import Fence, fenced, patiently
from workers.settings import HotFolderSettings, Settings

log = logging.getLogger(__name__)
SERVICE = "folder_monitor"


class Arrival(NamedTuple):
    name: str
    size: int
    mtime_ns: int


# Listings this process has already recorded, as (folder, epoch, hash of the listing): a scan
# that finds the very same files again only needs to claim the ones that have now settled.
_recorded_listings: set[tuple[str, int, int]] = set()


class FolderUnavailable(Exception):
    """The hot folder cannot be listed (a share that went away): retried at the next scan."""


def accept(path: Path) -> None:
    """The default handler of `FAILOVER_HOT_FOLDER`: take the file as it is."""


@functools.cache
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled regex for a list of glob patterns (fnmatch's own translation)."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def list_folder(folder: HotFolderSettings) -> tuple[list[Arrival], list[str]]:
    """The wanted regular files in the folder, and the names refused (symlinks).

    Entries of one `scandir` are the folder's direct children, so only a symlink can
    resolve outside it; symlinks are refused without being followed.
    """
    arrivals: list[Arrival] = []
    refused: list[str] = []
    take, skip = _matcher(tuple(folder.patterns)).match, _matcher(tuple(folder.ignore)).match
    try:
        with os.scandir(folder.path) as entries:
            for entry in entries:
                if not take(entry.name) or skip(entry.name):
                    continue
                if entry.is_symlink():
                    refused.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    arrivals.append(Arrival(entry.name, stat.st_size, stat.st_mtime_ns))
    except OSError as error:
        raise FolderUnavailable(f"{folder.path}: {error.strerror or error}") from None
    return arrivals, refused


def _arrays(arrivals: list[Arrival]) -> dict[str, list[Any]]:
    return {
        "names": [a.name for a in arrivals],
        "sizes": [a.size for a in arrivals],
        "mtimes": [a.mtime_ns for a in arrivals],
    }


def _load_listing(connection: Connection, arrivals: list[Arrival]) -> None:
    """The folder's listing as a temporary table with statistics, so the planner can hash-join.

    The table lives for this transaction only (`ON COMMIT DROP`): behind PgBouncer in
    transaction mode the next transaction may run on another server connection.
    """
    connection.execute(
        text(
            "CREATE TEMPORARY TABLE IF NOT EXISTS listing "
            "(name text, size bigint, mtime bigint) ON COMMIT DROP"
        )
    )
    connection.execute(
        text(
            "INSERT INTO listing SELECT * FROM unnest("
            "CAST(:names AS text[]), CAST(:sizes AS bigint[]), CAST(:mtimes AS bigint[]))"
        ),
        _arrays(arrivals),
    )
    connection.execute(text("ANALYZE listing"))


def record_and_claim(
    connection: Connection, folder: HotFolderSettings, arrivals: list[Arrival], fence: Fence
) -> list[tuple[int, str]]:
    """Record sightings, forget vanished ones, claim the settled ones; return (id, name) claimed."""
    _load_listing(connection, arrivals)
    params = {"folder": folder.name}
    connection.execute(
        text(
            "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state) "
            "SELECT CAST(:folder AS varchar), l.name, l.size, l.mtime, 'seen' FROM listing l "
            "WHERE NOT EXISTS (SELECT 1 FROM folder_file f WHERE f.folder = :folder "
            "AND f.rel_path = l.name AND f.size = l.size AND f.mtime_ns = l.mtime) "
            "ON CONFLICT ON CONSTRAINT folder_file_arrival_key DO NOTHING"
        ),
        params,
    )
    connection.execute(
        text(
            "DELETE FROM folder_file WHERE folder = :folder AND state = 'seen' "
            "AND (rel_path, size, mtime_ns) NOT IN (SELECT name, size, mtime FROM listing)"
        ),
        params,
    )
    return claim_settled(connection, folder, fence)


def claim_settled(
    connection: Connection, folder: HotFolderSettings, fence: Fence
) -> list[tuple[int, str]]:
    """Claim, under the epoch, every sighting unchanged for the settle time; (id, name) each."""
    claimed = connection.execute(
        text(
            "UPDATE folder_file SET state = 'processing', epoch = :epoch, node = :node, "
            "claimed_at = clock_timestamp() "
            "WHERE folder = :folder AND state = 'seen' "
            "AND first_seen_at <= clock_timestamp() - make_interval(secs => :settle) "
            "RETURNING id, rel_path"
        ),
        {
            "folder": folder.name,
            "epoch": fence.epoch,
            "node": fence.me.name,
            "settle": folder.settle_seconds,
        },
    ).all()
    return [(row.id, row.rel_path) for row in claimed]


def record_refusals(
    connection: Connection, folder: HotFolderSettings, names: list[str]
) -> list[str]:
    """Record refused names once (symlinks, escapes); return those not refused before."""
    rows = connection.execute(
        text(
            "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, error, finished_at) "
            "SELECT :folder, name, 0, 0, 'refused', 'a symlink or a path outside the folder', "
            "clock_timestamp() FROM unnest(CAST(:names AS text[])) AS name "
            "ON CONFLICT ON CONSTRAINT folder_file_arrival_key DO NOTHING RETURNING rel_path"
        ),
        {"folder": folder.name, "names": names},
    ).scalars()
    return list(rows)


def adopt_orphans(connection: Connection, folder: HotFolderSettings, fence: Fence) -> int:
    """Take over the claims of a previous owner (a dead node's files in processing)."""
    result = connection.execute(
        text(
            "UPDATE folder_file SET epoch = :epoch, node = :node, dispatched_at = NULL "
            "WHERE folder = :folder AND state IN ('claimed', 'processing') AND epoch < :epoch"
        ),
        {"folder": folder.name, "epoch": fence.epoch, "node": fence.me.name},
    )
    return int(result.rowcount)


def processing_path(folder: HotFolderSettings, file_id: int, name: str) -> Path:
    return folder.processing / f"{file_id}__{name}"


def move_into_processing(folder: HotFolderSettings, claimed: list[tuple[int, str]]) -> None:
    """Rename each claimed file into the processing area (the handler finds it either way)."""
    folder.processing.mkdir(parents=True, exist_ok=True)
    for file_id, name in claimed:
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder.path / name, processing_path(folder, file_id, name))


def take_batches(
    connection: Connection, folder: HotFolderSettings, settings: Settings, fence: Fence
) -> list[list[int]]:
    """Mark due files dispatched, up to the parallelism, and return them in batches."""
    size = settings.folder_batch_size
    ttl = folder.handler_timeout * size
    in_flight = connection.execute(
        text(
            "SELECT count(*) FROM folder_file WHERE folder = :folder AND state = 'processing' "
            "AND dispatched_at > clock_timestamp() - make_interval(secs => :ttl)"
        ),
        {"folder": folder.name, "ttl": ttl},
    ).scalar_one()
    room = settings.folder_parallelism * size - in_flight
    if room <= 0:
        return []
    ids = connection.execute(
        text(
            "UPDATE folder_file SET dispatched_at = clock_timestamp() WHERE id IN ("
            " SELECT id FROM folder_file WHERE folder = :folder AND state = 'processing'"
            " AND epoch = :epoch"
            " AND (dispatched_at IS NULL"
            "      OR dispatched_at <= clock_timestamp() - make_interval(secs => :ttl))"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())"
            " ORDER BY id LIMIT :room FOR UPDATE SKIP LOCKED) RETURNING id"
        ),
        {"folder": folder.name, "epoch": fence.epoch, "ttl": ttl, "room": room},
    ).scalars()
    ordered = sorted(ids)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def scan(
    settings: Settings, fence: Fence, send_batch: Callable[[str, list[int]], None]
) -> dict[str, int]:
    """One scan of every hot folder; returns how many files each newly claimed."""
    claimed_per_folder = {}
    for folder in settings.folders():
        claimed_per_folder[folder.name] = _scan_folder(settings, folder, fence, send_batch)
    return claimed_per_folder


def _scan_folder(
    settings: Settings,
    folder: HotFolderSettings,
    fence: Fence,
    send_batch: Callable[[str, list[int]], None],
) -> int:
    try:
        arrivals, refused = list_folder(folder)
    except FolderUnavailable as error:
        log.warning(
            "node %s: hot folder %s unavailable, retrying at the next scan: %s",
            fence.me.name,
            folder.name,
            error,
        )
        return 0
    listing = (folder.name, fence.epoch, hash((tuple(arrivals), tuple(refused))))
    unchanged = listing in _recorded_listings
    adopted = 0
    with fenced(settings, fence) as connection:
        if not _folder_lock(connection, folder):
            return 0
        if unchanged:
            claimed = claim_settled(connection, folder, fence)
        else:
            for name in record_refusals(connection, folder, refused):
                log.warning(
                    "node %s: refused %s/%s: a symlink or a path outside the folder",
                    fence.me.name,
                    folder.name,
                    name,
                )
            adopted = adopt_orphans(connection, folder, fence)
            claimed = record_and_claim(connection, folder, arrivals, fence)
        batches = take_batches(connection, folder, settings, fence)
        leftovers = sweep_processing(connection, folder)
    settle_leftovers(settings, fence, folder, leftovers)
    _recorded_listings.discard(listing)
    if not claimed:
        _recorded_listings.add(listing)
    if adopted:
        log.warning(
            "node %s: adopted %d unfinished files of %s at epoch %d (previous owner gone)",
            fence.me.name,
            adopted,
            folder.name,
            fence.epoch,
        )
    for _file_id, name in claimed:
        log.info(
            "node %s: claimed %s/%s at epoch %d: unchanged for %g s",
            fence.me.name,
            folder.name,
            name,
            fence.epoch,
            folder.settle_seconds,
        )

    move_into_processing(folder, claimed)
    for batch in batches:
        send_batch(folder.name, batch)
    return len(claimed)


def _folder_lock(connection: Connection, folder: HotFolderSettings) -> bool:
    """One scan of a folder at a time (an overlapping scan simply skips)."""
    return bool(
        connection.execute(
            text("SELECT pg_try_advisory_xact_lock(hashtext('folder_monitor:' || :folder))"),
            {"folder": folder.name},
        ).scalar_one()
    )


def dispatch(
    settings: Settings,
    folder: HotFolderSettings,
    fence: Fence,
    send_batch: Callable[[str, list[int]], None],
) -> None:
    with fenced(settings, fence) as connection:
        batches = take_batches(connection, folder, settings, fence)
        leftovers = sweep_processing(connection, folder)
    settle_leftovers(settings, fence, folder, leftovers)
    for batch in batches:
        send_batch(folder.name, batch)


def folder_named(settings: Settings, name: str) -> HotFolderSettings:
    for folder in settings.folders():
        if folder.name == name:
            return folder
    raise ConfigError(f"unknown hot folder {name!r}")


def handle_files(
    settings: Settings, folder: HotFolderSettings, ids: list[int], fence: Fence
) -> int:
    """Run the handler on each file of a batch; returns how many were handled."""
    handled = 0
    for file_id in ids:
        try:
            handled += _handle_one(settings, folder, file_id, fence)
        except StaleEpoch as refusal:
            log.warning("node %s: rejected stale work on %s: %s", fence.me.name, SERVICE, refusal)
            return handled
    return handled


def _start(connection: Connection, file_id: int, epoch: int) -> Any:
    return connection.execute(
        text(
            "UPDATE folder_file SET attempts = attempts + 1, dispatched_at = clock_timestamp() "
            "WHERE id = :id AND state = 'processing' AND epoch = :epoch "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp()) "
            "RETURNING id, rel_path, attempts"
        ),
        {"id": file_id, "epoch": epoch},
    ).first()


def _handle_one(settings: Settings, folder: HotFolderSettings, file_id: int, fence: Fence) -> int:
    row = patiently(settings, fence, lambda connection: _start(connection, file_id, fence.epoch))
    if row is None:
        return 0
    path = _locate(folder, file_id, row.rel_path)
    error: str | None = "the file is missing from the processing area"
    if path is not None:
        error = run_handler(folder, path)
    done_dir = patiently(
        settings, fence, lambda connection: _finish(connection, folder, row, path, error, fence)
    )
    if done_dir is not None and path is not None:
        move_done(path, done_dir, row.rel_path, row.id)
    return 1


def move_done(path: Path, directory: Path, name: str, file_id: int) -> None:
    """Move a finished file out of processing, after its state committed. Another process
    may have moved it already (`sweep_processing`): then there is nothing to do."""
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, _destination(directory, name, file_id))


class Leftovers(NamedTuple):
    """Files in processing that no handler will finish (see `sweep_processing`)."""

    finished: list[tuple[Path, Path, str, int]]
    unrecorded: list[tuple[Path, str]]


def sweep_processing(connection: Connection, folder: HotFolderSettings) -> Leftovers:
    """What is left in processing that no handler will finish: files whose state committed
    as finished (their owner died between the commit and the move), and files the database
    has no claim for (it failed over and lost its last commits). Listed before the query,
    so a file renamed in after its claim committed is always found with its claim."""
    if not folder.processing.is_dir():
        return Leftovers([], [])
    left = {}
    for entry in os.scandir(folder.processing):
        number, _, name = entry.name.partition("__")
        if number.isdigit() and name:
            left[int(number)] = (Path(entry.path), name)
    if not left:
        return Leftovers([], [])
    rows = connection.execute(
        text("SELECT id, rel_path, state FROM folder_file WHERE id = ANY(:ids)"),
        {"ids": list(left)},
    ).all()
    claims = {row.id: row for row in rows if row.rel_path == left[row.id][1]}
    finished = [
        (path, folder.processed if claims[i].state == "processed" else folder.failed, name, i)
        for i, (path, name) in left.items()
        if i in claims and claims[i].state in ("processed", "failed")
    ]
    unrecorded = [(path, name) for i, (path, name) in left.items() if i not in claims]
    return Leftovers(finished, unrecorded)


def settle_leftovers(
    settings: Settings, fence: Fence, folder: HotFolderSettings, leftovers: Leftovers
) -> None:
    """After the transaction that found them: finished files go where their state says,
    unrecorded ones back into the hot folder, and those put back are counted (a write only
    when there are some)."""
    for path, directory, name, file_id in leftovers.finished:
        move_done(path, directory, name, file_id)
    restored = restore_unrecorded(fence, folder, leftovers.unrecorded)
    if restored:
        with transaction(settings) as connection:
            store.count_restored(connection, fence.me, restored)


def restore_unrecorded(
    fence: Fence, folder: HotFolderSettings, files: list[tuple[Path, str]]
) -> int:
    """Put files the database has no claim for back into the hot folder, to be claimed
    again (never over a newer file of the same name); returns how many were put back."""
    restored = 0
    for path, name in files:
        try:
            os.link(path, folder.path / name)
            os.unlink(path)
            restored += 1
        except FileExistsError:
            log.error(
                "node %s: %s/%s is in processing with no claim in the database, and a newer "
                "file of that name waits in the hot folder: left in %s for an operator",
                fence.me.name, folder.name, name, path,
            )  # fmt: skip
        except FileNotFoundError:
            continue
    if restored:
        log.warning(
            "node %s: put %d files of %s back into the hot folder: the database has no claim "
            "for them (it failed over without its last commits); they will be handled again",
            fence.me.name, restored, folder.name,
        )  # fmt: skip
    return restored


def _locate(folder: HotFolderSettings, file_id: int, name: str) -> Path | None:
    """Where the claimed file is now: in processing, or still in the hot folder (moved in)."""
    target = processing_path(folder, file_id, name)
    if target.exists():
        return target
    try:
        folder.processing.mkdir(parents=True, exist_ok=True)
        os.rename(folder.path / name, target)
        return target
    except FileNotFoundError:
        return None


def run_handler(folder: HotFolderSettings, path: Path) -> str | None:
    """Run the folder's handler on `path`; return the error, or None on success."""
    try:
        if folder.handler:
            load_handler(folder.handler)(path)
            return None
        assert folder.command is not None
        argv = [part.replace("{path}", str(path)) for part in folder.command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=folder.handler_timeout)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return f"exit {done.returncode}: {last[0]}"
        return None
    except subprocess.TimeoutExpired:
        return f"timed out after {folder.handler_timeout:g} s"
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def load_handler(spec: str) -> Callable[[Path], Any]:
    """`package.module:function`, imported; a configuration error if it cannot be."""
    module_name, _, attribute = spec.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"handler {spec!r} cannot be imported: {error}") from None
    if not callable(handler):
        raise ConfigError(f"handler {spec!r} is not callable")
    return handler  # type: ignore[no-any-return]


def _destination(directory: Path, name: str, file_id: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    return target if not target.exists() else directory / f"{name}.{file_id}"


def _finish(
    connection: Connection,
    folder: HotFolderSettings,
    row: Any,
    path: Path | None,
    error: str | None,
    fence: Fence,
) -> Path | None:
    """Record the outcome under the fence; the folder the file then goes to (None: retry)."""
    who = (
        f"node {fence.me.name}: {folder.name}/{row.rel_path} "
        f"(epoch {fence.epoch}, attempt {row.attempts})"
    )
    if error is None:
        return folder.processed if _set_state(connection, row, "processed", None, who) else None
    if row.attempts >= folder.max_attempts or path is None:
        if not _set_state(connection, row, "failed", error, who):
            return None
        log.error("%s failed for good: %s", who, error)
        return folder.failed
    delay = folder.retry_backoff * 2 ** (row.attempts - 1)
    connection.execute(
        text(
            "UPDATE folder_file SET dispatched_at = NULL, error = :error, "
            "next_attempt_at = clock_timestamp() + make_interval(secs => :delay) "
            "WHERE id = :id AND rel_path = :name AND state = 'processing'"
        ),
        {"id": row.id, "name": row.rel_path, "error": error, "delay": delay},
    )
    log.warning("%s handler failed, retrying in %.1f s: %s", who, delay, error)
    return None


def _set_state(connection: Connection, row: Any, state: str, error: str | None, who: str) -> bool:
    """Record a file's outcome; False (and one line) when its claim is gone: the database
    failed over without it, and the file goes back to the hot folder at the next scan."""
    updated = connection.execute(
        text(
            "UPDATE folder_file SET state = :state, error = :error, "
            "finished_at = clock_timestamp() "
            "WHERE id = :id AND rel_path = :name AND state = 'processing'"
        ),
        {"id": row.id, "name": row.rel_path, "state": state, "error": error},
    ).rowcount
    if not updated:
        log.warning("%s: its claim is gone from the database; not recording it %s", who, state)
    return bool(updated)


def check_folders(settings: Settings) -> None:
    """At node start: every folder exists and every handler imports (one line if not)."""
    for folder in settings.folders():
        if not folder.path.is_dir():
            raise ConfigError(f"hot folder {folder.name}: {folder.path} is not a directory")
        if folder.handler:
            load_handler(folder.handler)
