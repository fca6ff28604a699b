"""The folder monitor: picks up each file dropped in a hot folder exactly once.

A scan (on the owner of `folder_monitor`, at every heartbeat) lists each folder with
`os.scandir` (inotify does not fire on NFS or SMB) and, in one fenced transaction per
folder, records every arrival (name, size, mtime, device, inode) as `seen` and claims those
that have stayed the same for the folder's settle time, under the owner's epoch. Only then
is each claimed file renamed into the folder's processing area, after checking (`lstat`, no
symlink followed) that it is still the very file that was claimed.

Handlers run in batches (`handle_files`): one fenced transaction marks a batch's files as
handled by this incarnation, a child process of their own runs the handler on each (its
process group is killed at the handler's timeout, or as soon as the node may no longer act
for the service: `workers.fence.supervision`), each handled file is renamed into `.handled/`
at once (on disk, so a crash never re-runs it), and one transaction records the batch's
outcomes and clears the marks: the done marker. A new owner leaves marked files alone until
their handler is done with them or its lease has run out, so two runs never overlap.

Every file is at any time in the hot folder, in processing under a live claim, handled,
processed, or failed; a new owner adopts the claims of a previous one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import importlib
import json
import logging
import os
import re
import select
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Connection, text

from workers.errors import ConfigError, DatabaseUnavailable, StaleEpoch
from workers.fence import local_fence, local_state
from workers.fence.children import child_environment
from workers.fence.fencing import Fence, fenced, fenced_round_trip, persistently, reject
from workers.fence.supervision import (
    Forked,
    Watch,
    die_with_parent,
    guarded,
    run_command,
    supervise,
)
from workers.settings import HotFolderSettings, Settings
from workers.stores import registration, store
from workers.stores.database import Statement, transaction

log = logging.getLogger(__name__)
SERVICE = "folder_monitor"
HANDLED_DIR = ".handled"
ID_ROOM = len(str(2**63)) + len("__")
"""The bytes a processing name (`{id}__{name}`) adds to the file's own name."""
GONE_HANDLER = store.gone_incarnation("f.handler")
"""A file's handler mark holds until its incarnation is gone by the takeover rule."""


class Arrival(NamedTuple):
    """A regular file in a hot folder, with its identity on disk."""

    name: str
    size: int
    mtime_ns: int
    dev: int
    inode: int


class Claim(NamedTuple):
    """A claimed file as the ledger recorded it: the identity it must still have."""

    id: int
    name: str
    size: int | None
    mtime_ns: int | None
    dev: int | None
    inode: int | None
    attempts: int = 0


# Listings this process has already recorded, as (folder, incarnation, epoch, hash of the
# listing): a scan that finds the very same files again only needs to claim the ones that
# have now settled.
_recorded_listings: set[tuple[str, str, int, int]] = set()


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


class Listing(NamedTuple):
    """What a scan found: the wanted regular files, and the names it refuses with why."""

    arrivals: list[Arrival]
    refused: list[tuple[str, str]]
    unusable: list[tuple[str, str]]
    """Files refused by name (not UTF-8, too long): moved to failed/ so the folder goes on."""


SYMLINK = "a symlink or a path outside the folder"


def list_folder(folder: HotFolderSettings) -> Listing:
    """The wanted regular files in the folder and the names refused (symlinks, unusable).

    Entries of one `scandir` are the folder's direct children, so only a symlink can
    resolve outside it; symlinks are refused without being followed.
    """
    listing = Listing([], [], [])
    take, skip = _matcher(tuple(folder.patterns)).match, _matcher(tuple(folder.ignore)).match
    limit = _name_limit(folder)
    try:
        with os.scandir(folder.path) as entries:
            for entry in entries:
                if take(entry.name) and not skip(entry.name):
                    _sort_entry(entry, limit, listing)
    except OSError as error:
        raise FolderUnavailable(f"{folder.path}: {error.strerror or error}") from None
    return listing


def _sort_entry(entry: os.DirEntry[str], limit: int, listing: Listing) -> None:
    problem = unusable_name(entry.name, limit)
    if entry.is_symlink():
        listing.refused.append((entry.name, SYMLINK))
        return
    try:
        if not entry.is_file(follow_symlinks=False):
            return
        found = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return
    if problem:
        listing.unusable.append((entry.name, problem))
    else:
        arrival = Arrival(entry.name, found.st_size, found.st_mtime_ns, found.st_dev, entry.inode())
        listing.arrivals.append(arrival)


def _name_limit(folder: HotFolderSettings) -> int:
    """The longest name (in bytes) that still fits the processing area's `{id}__{name}`."""
    try:
        longest = os.pathconf(folder.path, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    return longest - ID_ROOM


def unusable_name(name: str, limit: int) -> str | None:
    """Why a file cannot be taken by its name, or None: PostgreSQL text is UTF-8, and the
    processing area adds the claim's id to the name."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if len(encoded) > limit:
        return f"its name is longer than {limit} bytes (the processing area adds the claim id)"
    return None


def shown_name(name: str) -> str:
    """A name as the ledger can store and an operator can read it (bad bytes escaped)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _arrays(arrivals: list[Arrival]) -> dict[str, list[Any]]:
    return {
        "names": [a.name for a in arrivals],
        "sizes": [a.size for a in arrivals],
        "mtimes": [a.mtime_ns for a in arrivals],
        "devs": [a.dev for a in arrivals],
        "inodes": [a.inode for a in arrivals],
    }


OPEN = "('seen', 'claimed', 'processing')"
CLAIM_COLUMNS = "id, rel_path, size, mtime_ns, dev, inode, attempts"


def record_and_claim(
    connection: Connection, folder: HotFolderSettings, arrivals: list[Arrival], fence: Fence
) -> list[Claim]:
    """Record new arrivals (a sighting whose file changed starts settling again), forget
    vanished ones, claim the settled ones. A file with no open record is a new arrival, even
    with the name, size and mtime of one processed before (a second copy)."""
    for sql, params in listing_sql(folder, arrivals):
        connection.execute(text(sql), params)
    return claim_settled(connection, folder, fence)


def listing_sql(folder: HotFolderSettings, arrivals: list[Arrival]) -> list[Statement]:
    """The folder's listing as a temporary table with statistics (so the planner can
    hash-join), then the sightings it changes. The table lives for this transaction only
    (`ON COMMIT DROP`): behind PgBouncer in transaction mode the next transaction may run
    on another server connection."""
    params = {"folder": folder.name}
    return [
        (
            "CREATE TEMPORARY TABLE IF NOT EXISTS listing "
            "(name text, size bigint, mtime bigint, dev bigint, inode bigint) ON COMMIT DROP",
            {},
        ),
        (
            "INSERT INTO listing SELECT * FROM unnest(CAST(:names AS text[]), "
            "CAST(:sizes AS bigint[]), CAST(:mtimes AS bigint[]), CAST(:devs AS bigint[]), "
            "CAST(:inodes AS bigint[]))",
            _arrays(arrivals),
        ),
        ("ANALYZE listing", {}),
        (
            "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, dev, inode, state) "
            "SELECT CAST(:folder AS varchar), l.name, l.size, l.mtime, l.dev, l.inode, 'seen' "
            "FROM listing l WHERE NOT EXISTS (SELECT 1 FROM folder_file f "
            f"WHERE f.folder = :folder AND f.rel_path = l.name AND f.state IN {OPEN} "
            "AND f.size = l.size AND f.mtime_ns = l.mtime AND f.inode = l.inode "
            "AND f.dev = l.dev) "
            f"ON CONFLICT (folder, rel_path) WHERE state IN {OPEN} DO UPDATE "
            "SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, dev = EXCLUDED.dev, "
            "inode = EXCLUDED.inode, first_seen_at = clock_timestamp() "
            "WHERE folder_file.state = 'seen'",
            params,
        ),
        (
            "DELETE FROM folder_file WHERE folder = :folder AND state = 'seen' "
            "AND rel_path NOT IN (SELECT name FROM listing)",
            params,
        ),
    ]


def claim_settled(connection: Connection, folder: HotFolderSettings, fence: Fence) -> list[Claim]:
    """Claim, under the epoch, every sighting unchanged for the settle time."""
    sql, params = claim_settled_sql(folder, fence)
    return [Claim(*row) for row in connection.execute(text(sql), params).all()]


def claim_settled_sql(folder: HotFolderSettings, fence: Fence) -> Statement:
    return (
        "UPDATE folder_file SET state = 'processing', epoch = :epoch, node = :node, "
        "claimed_at = clock_timestamp() "
        "WHERE folder = :folder AND state = 'seen' "
        f"AND first_seen_at <= clock_timestamp() - make_interval(secs => :settle) "
        f"RETURNING {CLAIM_COLUMNS}",
        {
            "folder": folder.name,
            "epoch": fence.epoch,
            "node": fence.me.name,
            "settle": folder.settle_seconds,
        },
    )


def record_refusals(
    connection: Connection, folder: HotFolderSettings, refused: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Record refused names once, with why (symlinks, unusable names); return the new ones."""
    sql, params = refusals_sql(folder, refused)
    return [(row.rel_path, row.error) for row in connection.execute(text(sql), params)]


def refusals_sql(folder: HotFolderSettings, refused: list[tuple[str, str]]) -> Statement:
    return (
        "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, error, finished_at) "
        "SELECT CAST(:folder AS varchar), r.name, 0, 0, 'refused', r.why, clock_timestamp() "
        "FROM unnest(CAST(:names AS text[]), CAST(:whys AS text[])) AS r(name, why) "
        "WHERE NOT EXISTS (SELECT 1 FROM folder_file f WHERE f.folder = :folder "
        "AND f.rel_path = r.name AND f.state = 'refused') RETURNING rel_path, error",
        {
            "folder": folder.name,
            "names": [shown_name(name) for name, _ in refused],
            "whys": [why for _, why in refused],
        },
    )


def adopt_orphans(connection: Connection, folder: HotFolderSettings, fence: Fence) -> int:
    """Take over the claims of a previous owner. Files its handlers still hold (marked, lease
    fresh) stay with them until they are done: `take_batches` skips marked files."""
    sql, params = adopt_orphans_sql(folder, fence)
    return len(connection.execute(text(sql), params).all())


def adopt_orphans_sql(folder: HotFolderSettings, fence: Fence) -> Statement:
    return (
        "UPDATE folder_file SET epoch = :epoch, node = :node, dispatched_at = NULL "
        "WHERE folder = :folder AND state IN ('claimed', 'processing') AND epoch < :epoch "
        "RETURNING id",
        {"folder": folder.name, "epoch": fence.epoch, "node": fence.me.name},
    )


def release_dead_marks(connection: Connection, folder: HotFolderSettings, fence: Fence) -> int:
    """Clear the handler marks of incarnations gone by the takeover rule (their guards killed
    their handlers), and this incarnation's own marks of batches no longer in flight on this
    host (a killed pool process, an outcome the database lost): those files can be handled
    again."""
    sql, params = release_dead_marks_sql(folder, fence)
    return int(connection.execute(text(sql), params).rowcount)


def release_dead_marks_sql(folder: HotFolderSettings, fence: Fence) -> Statement:
    live = [
        name.removeprefix(BATCH_MARK) for name in local_state.held(fence.me.incarnation, BATCH_MARK)
    ]
    return (
        "UPDATE folder_file AS f SET handler = NULL, handling_since = NULL, "
        "handler_batch = NULL, dispatched_at = NULL "
        "WHERE f.folder = :folder AND f.state = 'processing' "
        "AND f.handler IS NOT NULL AND CASE WHEN f.handler = :me "
        "THEN f.handler_batch IS NULL OR NOT f.handler_batch = ANY(CAST(:live AS uuid[])) "
        f"ELSE {GONE_HANDLER} END",
        {"folder": folder.name, "me": fence.me.incarnation, "live": live},
    )


def processing_path(folder: HotFolderSettings, file_id: int, name: str) -> Path:
    return folder.processing / f"{file_id}__{name}"


def handled_path(folder: HotFolderSettings, file_id: int, name: str) -> Path:
    return folder.path / HANDLED_DIR / f"{file_id}__{name}"


def same_file(path: Path, claim: Claim, whole: bool = True) -> bool:
    """Whether `path` (not followed if a symlink) is still the claimed file: same device and
    inode and, with `whole`, same size and mtime. Unknown identities (older rows) match."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(found.st_mode):
        return False
    if claim.inode is None or claim.dev is None:
        return True
    same = (found.st_dev, found.st_ino) == (claim.dev, claim.inode)
    if whole and claim.size is not None:
        same = same and (found.st_size, found.st_mtime_ns) == (claim.size, claim.mtime_ns)
    return same


def move_into_processing(folder: HotFolderSettings, claimed: list[Claim]) -> list[int]:
    """Rename each claimed file into the processing area if it is still the file claimed;
    return the ids of those that changed or were replaced since (their claims are undone)."""
    folder.processing.mkdir(parents=True, exist_ok=True)
    changed = []
    for claim in claimed:
        source = folder.path / claim.name
        if not same_file(source, claim):
            if source.exists():
                changed.append(claim.id)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.rename(source, processing_path(folder, claim.id, claim.name))
    return changed


def undo_claims(connection: Connection, ids: list[int]) -> None:
    """Forget claims whose file changed before it was taken: the next scan sees it anew."""
    connection.execute(
        text(
            "DELETE FROM folder_file WHERE id = ANY(:ids) AND state = 'processing' "
            "AND handler IS NULL"
        ),
        {"ids": ids},
    )


def take_batches(
    connection: Connection, folder: HotFolderSettings, settings: Settings, fence: Fence
) -> list[list[int]]:
    """Mark due files dispatched, up to the parallelism, and return them in batches. A batch
    whose message was lost (never started) is sent again after about a lease."""
    release_dead_marks(connection, folder, fence)
    sql, params = take_batches_sql(folder, settings, fence)
    return in_batches(settings, list(connection.execute(text(sql), params).scalars()))


def take_batches_sql(folder: HotFolderSettings, settings: Settings, fence: Fence) -> Statement:
    """Room is what the parallelism leaves beside the files in flight (marked, or sent
    within about a lease); `release_dead_marks_sql` goes first."""
    lost_after = settings.node_lease_timeout() + settings.heartbeat_interval
    capacity = settings.folder_parallelism * settings.folder_batch_size
    in_flight = (
        "SELECT count(*) FROM folder_file WHERE folder = :folder AND state = 'processing' "
        "AND (handler IS NOT NULL "
        "OR dispatched_at > clock_timestamp() - make_interval(secs => :lost))"
    )
    return (
        "UPDATE folder_file SET dispatched_at = clock_timestamp() WHERE id IN ("
        " SELECT id FROM folder_file WHERE folder = :folder AND state = 'processing'"
        " AND epoch = :epoch AND handler IS NULL"
        " AND (dispatched_at IS NULL"
        "      OR dispatched_at <= clock_timestamp() - make_interval(secs => :lost))"
        " AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())"
        f" ORDER BY id LIMIT greatest(0, :capacity - ({in_flight})) FOR UPDATE SKIP LOCKED)"
        " RETURNING id",
        {"folder": folder.name, "epoch": fence.epoch, "lost": lost_after, "capacity": capacity},
    )


def in_batches(settings: Settings, ids: list[int]) -> list[list[int]]:
    ordered, size = sorted(ids), settings.folder_batch_size
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def scan(
    settings: Settings, fence: Fence, send_batch: Callable[[str, list[int]], None]
) -> dict[str, int]:
    """One scan of every hot folder; returns how many files each newly claimed. A folder that
    fails for a reason of its own is logged and skipped: the others are still scanned."""
    claimed_per_folder = {}
    for folder in settings.folders():
        try:
            claimed_per_folder[folder.name] = _scan_folder(settings, folder, fence, send_batch)
        except (StaleEpoch, DatabaseUnavailable):
            raise
        except Exception:
            log.exception("node %s: scan of hot folder %s failed", fence.me.name, folder.name)
            claimed_per_folder[folder.name] = 0
    return claimed_per_folder


def _scan_folder(
    settings: Settings,
    folder: HotFolderSettings,
    fence: Fence,
    send_batch: Callable[[str, list[int]], None],
) -> int:
    try:
        found = list_folder(folder)
    except FolderUnavailable as error:
        log.warning(
            "node %s: hot folder %s unavailable, retrying at the next scan: %s",
            fence.me.name,
            folder.name,
            error,
        )
        return 0
    seen = hash((tuple(found.arrivals), tuple(found.refused)))
    listing = (folder.name, fence.me.incarnation, fence.epoch, seen)
    unchanged = listing in _recorded_listings and not found.unusable
    try:
        scanned = _scan_message(settings, folder, fence, None if unchanged else found)
    except FolderBusy:
        return 0
    claimed, batches, leftovers = scanned.claimed, scanned.batches, scanned.leftovers
    adopted, refusals = scanned.adopted, scanned.refusals
    if not unchanged:
        _report_refusals(fence, folder, refusals)
    set_aside(fence, folder, found.unusable)
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
    for claim in claimed:
        log.info(
            "node %s: claimed %s/%s at epoch %d: unchanged for %g s",
            fence.me.name,
            folder.name,
            claim.name,
            fence.epoch,
            folder.settle_seconds,
        )
    changed = move_into_processing(folder, claimed)
    if changed:
        _undo_changed(settings, fence, folder, changed)
    for batch in batches:
        rest = [file_id for file_id in batch if file_id not in changed]
        if rest:
            send_batch(folder.name, rest)
    return len(claimed) - len(changed)


class Scanned(NamedTuple):
    """What one scan of a folder did in the database."""

    claimed: list[Claim]
    batches: list[list[int]]
    leftovers: Leftovers
    adopted: int
    refusals: list[tuple[str, str]]


def _scan_message(
    settings: Settings, folder: HotFolderSettings, fence: Fence, found: Listing | None
) -> Scanned:
    """A scan of a folder in one round trip under the fence: record its listing if it
    changed (`found`; None: unchanged since the last scan), adopt a previous owner's claims,
    claim what settled, send what is due, sweep the areas. Raises `FolderBusy` when another
    scan of the folder holds it."""
    waiting, handled = _areas(folder)
    statements: list[Statement] = [(LOCK_FOLDER, {"folder": folder.name})]
    marks: dict[str, int] = {}
    if found is not None:
        refused = found.refused + found.unusable
        if refused:
            marks["refusals"] = len(statements)
            statements.append(refusals_sql(folder, refused))
        marks["adopted"] = len(statements)
        statements.append(adopt_orphans_sql(folder, fence))
        statements += listing_sql(folder, found.arrivals)
    marks["claimed"] = len(statements)
    statements += [claim_settled_sql(folder, fence), release_dead_marks_sql(folder, fence)]
    marks["batches"] = len(statements)
    statements.append(take_batches_sql(folder, settings, fence))
    sweep = _sweep_sql(waiting, handled, fence) if waiting or handled else []
    try:
        results = fenced_round_trip(settings, fence, [*statements, *sweep])
    except psycopg.Error as error:
        if error.sqlstate == BUSY:
            raise FolderBusy(folder.name) from None
        raise
    return Scanned(
        claimed=[Claim(*row) for row in results[marks["claimed"]]],
        batches=in_batches(settings, [row[0] for row in results[marks["batches"]]]),
        leftovers=_leftovers(folder, waiting, handled, results[-1]) if sweep else NO_LEFTOVERS,
        adopted=len(results[marks["adopted"]]) if "adopted" in marks else 0,
        refusals=[(row[0], row[1]) for row in results[marks["refusals"]]]
        if "refusals" in marks
        else [],
    )


class FolderBusy(Exception):
    """Another scan of the folder holds its lock: this one skips it."""


BUSY = "FOBZ1"
LOCK_FOLDER = (
    "SELECT pg_try_advisory_xact_lock(hashtext('folder_monitor:' || CAST(:folder AS text))) "
    "OR failover_busy('folder ' || :folder)"
)
"""One scan of a folder at a time: a scan that finds another holding the folder's lock
stops there (`failover_busy` raises `BUSY`, rolling its message back)."""


def _report_refusals(
    fence: Fence, folder: HotFolderSettings, refusals: list[tuple[str, str]]
) -> None:
    for name, why in refusals:
        log.warning("node %s: refused %s/%s: %s", fence.me.name, folder.name, name, why)


def set_aside(fence: Fence, folder: HotFolderSettings, unusable: list[tuple[str, str]]) -> None:
    """Move files that cannot be taken by their name into failed/ (their refusal recorded)."""
    for name, _why in unusable:
        folder.failed.mkdir(parents=True, exist_ok=True)
        for target in _free_names(folder.failed, name):
            try:
                os.link(folder.path / name, target, follow_symlinks=False)
            except FileExistsError:
                continue
            except FileNotFoundError:
                break
            except OSError:  # the name with a suffix is too long: the next is shorter
                continue
            os.unlink(folder.path / name)
            break


def _free_names(directory: Path, name: str) -> list[Path]:
    """Where a refused file may go in failed/: its name, then with a suffix, then a short
    name of its own (a refused name may already be taken there, or be too long to extend)."""
    suffixed = [directory / f"{name}.{number}" for number in range(1, 10)]
    return [directory / name, *suffixed, directory / f"refused-{uuid.uuid4().hex}"]


def _undo_changed(
    settings: Settings, fence: Fence, folder: HotFolderSettings, changed: list[int]
) -> None:
    log.warning(
        "node %s: %d claimed files of %s changed or were replaced before they were taken: "
        "they are seen anew at the next scan",
        fence.me.name,
        len(changed),
        folder.name,
    )
    try:
        with fenced(settings, fence) as connection:
            undo_claims(connection, changed)
    except StaleEpoch as refusal:
        reject(settings, fence, refusal)


def dispatch(
    settings: Settings,
    folder: HotFolderSettings,
    fence: Fence,
    send_batch: Callable[[str, list[int]], None],
) -> None:
    """Send the folder's next batches (after a batch ended): one round trip, under the
    fence; leftovers in the processing area are the next scan's."""
    _dead, taken = fenced_round_trip(
        settings,
        fence,
        [release_dead_marks_sql(folder, fence), take_batches_sql(folder, settings, fence)],
    )
    for batch in in_batches(settings, [row[0] for row in taken]):
        send_batch(folder.name, batch)


def in_flight(connection: Connection, settings: Settings) -> list[str]:
    """Files a handler runs on, or whose batch was sent and may still start: what a planned
    handover waits for (a claimed file not yet sent is the next owner's to handle)."""
    lost_after = settings.longest_lease() + settings.heartbeat_interval
    rows = connection.execute(
        text(
            "SELECT folder || '/' || rel_path FROM folder_file WHERE state = 'processing' "
            "AND (handler IS NOT NULL "
            "OR dispatched_at > clock_timestamp() - make_interval(secs => :lost)) ORDER BY id"
        ),
        {"lost": lost_after},
    ).scalars()
    return list(rows)


def folder_named(settings: Settings, name: str) -> HotFolderSettings:
    for folder in settings.folders():
        if folder.name == name:
            return folder
    raise ConfigError(f"unknown hot folder {name!r}")


# ---------------------------------------------------------------- handling a batch


@dataclass(frozen=True)
class Outcome:
    """What became of one file of a batch: `processed`, `failed`, `retry` (after `delay`),
    or `untried` (never started, or stopped through no fault of its own)."""

    kind: str
    error: str | None = None
    delay: float = 0.0


def handle_files(
    settings: Settings, folder: HotFolderSettings, ids: list[int], fence: Fence
) -> int:
    """Handle a batch: mark it (one fenced transaction), run the handler on each file in a
    supervised child process, record every outcome and clear the marks (one transaction);
    returns how many files were handled. The batch's own id makes a start or an outcome
    retried after an ambiguous COMMIT find its marks, and every path records an outcome."""
    if local_fence.holding_off(settings):
        return 0
    batch = str(uuid.uuid4())
    with local_state.holding(fence.me.incarnation, f"{BATCH_MARK}{batch}"):
        return _handle_batch(settings, folder, ids, fence, batch)


BATCH_MARK = "batch-"
"""A batch is in flight on its host while `local_state` holds `batch-<id>`: marks of this
incarnation whose batch is not held are stranded (its outcome was lost), and are cleared."""


def _handle_batch(
    settings: Settings, folder: HotFolderSettings, ids: list[int], fence: Fence, batch: str
) -> int:
    try:
        claims = start_batch(settings, ids, fence, batch)
    except StaleEpoch as refusal:
        reject(settings, fence, refusal)
        return 0
    if not claims:
        return 0
    try:
        environment = child_environment({}, settings.child_env_passthrough)
        outcomes = run_batch(folder, claims, fence, environment)
    except OSError as error:
        log.error("node %s: could not run the handler of %s: %s", fence.me.name, folder.name, error)
        outcomes = {claim.id: Outcome("untried", f"could not run: {error}") for claim in claims}
    recorded = record_batch(settings, fence, claims, outcomes, batch)
    if len(recorded) < len(claims):
        lost = len(claims) - len(recorded)
        reject(
            settings,
            fence,
            f"{lost} outcomes in {folder.name}: their marks are gone (another handler took "
            "the files after this node's lease ran out, or the database lost the claims)",
        )
    move_finished(folder, [claim for claim in claims if claim.id in recorded], outcomes)
    return sum(1 for claim in claims if outcomes[claim.id].kind != "untried")


def start_batch(settings: Settings, ids: list[int], fence: Fence, batch: str) -> list[Claim]:
    """Mark the batch's files as handled by this incarnation and `batch` (skipping any marked
    by another batch; a retry of this very start finds its own marks): one round trip under
    the fence, tried again while the database is unavailable."""
    (rows,) = fenced_round_trip(
        settings,
        fence,
        [
            (
                "UPDATE folder_file SET "
                "attempts = attempts + CASE WHEN handler IS NULL THEN 1 ELSE 0 END, "
                "handler = :me, handler_batch = :batch, "
                "handling_since = clock_timestamp(), dispatched_at = clock_timestamp() "
                "WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'processing' "
                "AND epoch = :epoch "
                "AND (handler IS NULL OR (handler = :me AND handler_batch = :batch)) "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp() "
                "OR handler_batch = :batch) "
                f"RETURNING {CLAIM_COLUMNS}",
                {"ids": ids, "epoch": fence.epoch, "me": fence.me.incarnation, "batch": batch},
            )
        ],
        patient=True,
    )
    return sorted((Claim(*row) for row in rows), key=lambda claim: claim.id)


def run_batch(
    folder: HotFolderSettings, claims: list[Claim], fence: Fence, environment: dict[str, str]
) -> dict[int, Outcome]:
    """Each file's outcome: handled before (found in `.handled/`), missing, or run now (a
    `command` gets `environment`)."""
    outcomes: dict[int, Outcome] = {}
    ready = []
    for claim in claims:
        where = _locate(folder, claim)
        if where == "handled":
            outcomes[claim.id] = Outcome("processed")
        elif where == "failed":
            outcomes[claim.id] = Outcome("failed", "failed before (found in failed/)")
        elif where is None:
            outcomes[claim.id] = Outcome("failed", "the file is missing, or was replaced")
        else:
            ready.append(claim)
    if ready:
        outcomes.update(_run_children(folder, ready, fence, environment))
    return {claim.id: _with_retry(folder, claim, outcomes[claim.id]) for claim in claims}


def _with_retry(folder: HotFolderSettings, claim: Claim, outcome: Outcome) -> Outcome:
    """A handler failure is retried (with backoff) until the folder's `max_attempts`."""
    if outcome.kind != "failed" or claim.attempts >= folder.max_attempts:
        return outcome
    if outcome.error and outcome.error.startswith(("the file is missing", "failed before")):
        return outcome
    delay = folder.retry_backoff * 2 ** (claim.attempts - 1)
    return Outcome("retry", outcome.error, delay)


def _locate(folder: HotFolderSettings, claim: Claim) -> str | None:
    """Where the claimed file is: `handled` (its handler already succeeded), `ready` (in
    processing, moved there now if it still waits in the hot folder), `failed` (it failed
    for good before), or None (missing)."""
    if handled_path(folder, claim.id, claim.name).exists():
        return "handled"
    target = processing_path(folder, claim.id, claim.name)
    if target.exists():
        return "ready"
    source = folder.path / claim.name
    if not same_file(source, claim):
        return _finished_before(folder, claim)
    folder.processing.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return None
    return "ready"


def _finished_before(folder: HotFolderSettings, claim: Claim) -> str | None:
    """`handled` if the claimed file itself (same device and inode) is already in
    processed/, `failed` if in failed/: its outcome committed once and the database lost it
    (a standby promoted without the last writes). None if it is nowhere to be found."""
    if claim.inode is None or claim.dev is None:
        return None
    for directory, where in ((folder.processed, "handled"), (folder.failed, "failed")):
        for name in (claim.name, f"{claim.name}.{claim.id}"):
            if same_file(directory / name, claim, whole=False):
                return where
    return None


def _run_children(
    folder: HotFolderSettings, claims: list[Claim], fence: Fence, environment: dict[str, str]
) -> dict[int, Outcome]:
    """Run the handler on the claimed files in one child process below a guard
    (`supervision.guarded`), killed at a file's timeout, when the fence is lost or when the
    node's worker dies; the outcome of each file."""
    (folder.path / HANDLED_DIR).mkdir(exist_ok=True)
    what = f"the handler of {len(claims)} files of {folder.name}"

    def in_guard(watch: Watch) -> dict[str, list[Any]]:
        found = _batch_in_guard(folder, claims, fence, environment, what, watch)
        return {str(number): [o.kind, o.error, o.delay] for number, o in found.items()}

    result = guarded(in_guard, what)
    if result is None:
        return {claim.id: Outcome("untried", "its guard process died") for claim in claims}
    return {int(number): Outcome(*outcome) for number, outcome in result.items()}


def _batch_in_guard(
    folder: HotFolderSettings,
    claims: list[Claim],
    fence: Fence,
    environment: dict[str, str],
    what: str,
    watch: Watch,
) -> dict[int, Outcome]:
    """In the guard: hold each file for the batch's life, fork the batch child, follow its
    reports, and stop it in time. A file another batch of this node still handles (the
    database lost that batch's marks with a promoted standby's last writes) is not started."""
    held = hold_files(fence, folder, [claim.id for claim in claims])
    busy = [claim for claim in claims if claim.id not in held]
    claims = [claim for claim in claims if claim not in busy]
    outcomes = {claim.id: Outcome("untried", STILL_HANDLED) for claim in busy}
    if claims:
        outcomes.update(_run_batch_child(folder, claims, fence, environment, what, watch))
    return outcomes


STILL_HANDLED = "another batch on this node still handles it"


def hold_files(fence: Fence, folder: HotFolderSettings, ids: list[int]) -> set[int]:
    """Hold claimed files on this node for the life of this process (a batch's guard); the
    ids it got (another batch of this node may hold the others)."""
    return local_state.hold_slots(fence.me.incarnation, _folder_key(folder), ids)


def _folder_key(folder: HotFolderSettings) -> str:
    return "files-" + hashlib.sha256(folder.name.encode()).hexdigest()[:16]


def _held_here(fence: Fence, folder: HotFolderSettings, path: Path) -> bool:
    """Whether a batch of this node still handles the file at `path` (`{id}__{name}`),
    whatever the database says of its claim."""
    number = path.name.partition("__")[0]
    return number.isdigit() and local_state.slot_held(
        fence.me.incarnation, _folder_key(folder), int(number)
    )


def _run_batch_child(
    folder: HotFolderSettings,
    claims: list[Claim],
    fence: Fence,
    environment: dict[str, str],
    what: str,
    watch: Watch,
) -> dict[int, Outcome]:
    guard = os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the batch child
        os.close(read_end)
        die_with_parent(guard)
        _child_main(folder, claims, write_end, environment)
    os.close(write_end)
    reports = _Reports(read_end)
    timeout = reports.deadline(folder.handler_timeout)
    ending = supervise(Forked(pid), what, fence, timeout, reports.read, watch)
    reports.read(0)
    os.close(read_end)
    return reports.outcomes(claims, ending.killed_for, ending.timed_out, folder.handler_timeout)


class _Reports:
    """The lines a handler child writes: `S id` (started), `O id` (handled), `E id error`."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor
        self.buffer = b""
        self.started: dict[int, float] = {}
        self.ended: dict[int, Outcome] = {}

    def read(self, wait: float) -> None:
        while select.select([self.descriptor], [], [], wait)[0]:
            chunk = os.read(self.descriptor, 65536)
            if not chunk:
                return
            self.buffer += chunk
            *lines, self.buffer = self.buffer.split(b"\n")
            for line in lines:
                self._note(line.decode("utf-8", "replace"))
            wait = 0

    def _note(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        number, _, error = rest.partition(" ")
        if kind == "S":
            self.started[int(number)] = time.monotonic()
        elif kind == "O":
            self.ended[int(number)] = Outcome("processed")
        elif kind == "E":
            self.ended[int(number)] = Outcome("failed", error)

    def deadline(self, timeout: float) -> Callable[[], float | None]:
        def current() -> float | None:
            running = [at for number, at in self.started.items() if number not in self.ended]
            return running[-1] + timeout if running else None

        return current

    def outcomes(
        self, claims: list[Claim], killed_for: str | None, timed_out: bool, timeout: float
    ) -> dict[int, Outcome]:
        found = {}
        for claim in claims:
            if claim.id in self.ended:
                found[claim.id] = self.ended[claim.id]
            elif claim.id in self.started and timed_out:
                found[claim.id] = Outcome("failed", f"timed out after {timeout:g} s")
            elif claim.id in self.started and not killed_for:
                found[claim.id] = Outcome("failed", "the handler process died")
            else:
                found[claim.id] = Outcome("untried", killed_for)
        return found


def _child_main(
    folder: HotFolderSettings, claims: list[Claim], descriptor: int, environment: dict[str, str]
) -> None:
    """In the handler child: handle each file, rename each success into `.handled/` at once."""
    code = 0
    try:
        os.environ.clear()
        os.environ.update(environment)
        for claim in claims:
            os.write(descriptor, f"S {claim.id}\n".encode())
            path = processing_path(folder, claim.id, claim.name)
            error = run_handler(folder, path, environment)
            if error is None and not _mark_handled(folder, claim, path):
                error = "the file was replaced in the processing area"
            line = f"O {claim.id}" if error is None else f"E {claim.id} {_one_line(error)}"
            os.write(descriptor, f"{line}\n".encode())
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _one_line(error: str) -> str:
    return " ".join(error.split())[:2000]


def _mark_handled(folder: HotFolderSettings, claim: Claim, path: Path) -> bool:
    """Rename a handled file into `.handled/` (it may have been changed by its handler, so
    only its device and inode are checked); a handler that removed it leaves nothing to do."""
    if not path.exists():
        return True
    if not same_file(path, claim, whole=False):
        return False
    os.rename(path, handled_path(folder, claim.id, claim.name))
    return True


def record_batch(
    settings: Settings,
    fence: Fence,
    claims: list[Claim],
    outcomes: dict[int, Outcome],
    batch: str,
) -> set[int]:
    """Record every outcome of a batch and clear its marks, in one statement (one round
    trip, tried again while the database is unavailable), fenced by the marks: only files
    this batch still holds. Returns the ids recorded, by this call or by an earlier try of
    it whose COMMIT went through unanswered (the batch id stays behind)."""
    rows = [
        {"id": claim.id, "kind": outcomes[claim.id].kind, "error": outcomes[claim.id].error,
         "delay": outcomes[claim.id].delay}
        for claim in claims
    ]  # fmt: skip
    statement = (
        "WITH updated AS (UPDATE folder_file AS f SET "
        "state = CASE WHEN o.kind IN ('processed', 'failed') THEN o.kind ELSE f.state END, "
        "error = CASE WHEN o.kind = 'untried' THEN f.error ELSE o.error END, "
        "finished_at = CASE WHEN o.kind IN ('processed', 'failed') "
        "THEN clock_timestamp() END, "
        "attempts = f.attempts - CASE WHEN o.kind = 'untried' THEN 1 ELSE 0 END, "
        "next_attempt_at = CASE WHEN o.kind = 'retry' "
        "THEN clock_timestamp() + make_interval(secs => o.delay) ELSE f.next_attempt_at END, "
        "handler = NULL, handling_since = NULL, dispatched_at = NULL "
        "FROM json_to_recordset(CAST(:outcomes AS json)) "
        "AS o(id bigint, kind text, error text, delay float8) "
        "WHERE f.id = o.id AND f.state IN ('processing') AND f.handler = :me "
        "AND f.handler_batch = :batch RETURNING f.id) "
        "SELECT id FROM updated UNION SELECT id FROM folder_file "
        "WHERE id = ANY(CAST(:ids AS bigint[])) AND handler IS NULL AND handler_batch = :batch"
    )
    params = {
        "outcomes": json.dumps(rows),
        "me": fence.me.incarnation,
        "batch": batch,
        "ids": [claim.id for claim in claims],
    }
    (found_rows,) = persistently(settings, fence.me, [(statement, params)])
    found = {row[0] for row in found_rows}
    _log_outcomes(fence, claims, outcomes, found)
    return found


def _log_outcomes(
    fence: Fence, claims: list[Claim], outcomes: dict[int, Outcome], recorded: set[int]
) -> None:
    for claim in claims:
        outcome = outcomes[claim.id]
        who = f"node {fence.me.name}: {claim.name} (epoch {fence.epoch}, attempt {claim.attempts})"
        if claim.id not in recorded:
            continue
        if outcome.kind == "failed":
            log.error("%s failed for good: %s", who, outcome.error)
        elif outcome.kind == "retry":
            log.warning(
                "%s handler failed, retrying in %.1f s: %s", who, outcome.delay, outcome.error
            )
        elif outcome.kind == "untried" and outcome.error:
            log.warning("%s stopped before it was handled: %s", who, outcome.error)


def move_finished(
    folder: HotFolderSettings, claims: list[Claim], outcomes: dict[int, Outcome]
) -> None:
    """After the outcomes committed: handled files into processed/, failed ones into failed/."""
    for claim in claims:
        kind = outcomes[claim.id].kind
        if kind == "processed":
            move_done(
                handled_path(folder, claim.id, claim.name), folder.processed, claim.name, claim.id
            )
        elif kind == "failed":
            move_done(
                processing_path(folder, claim.id, claim.name), folder.failed, claim.name, claim.id
            )


def move_done(path: Path, directory: Path, name: str, file_id: int) -> None:
    """Move a finished file out of processing, after its state committed. Another process
    may have moved it already (`sweep_processing`): then there is nothing to do. A move that
    fails (the destination went away) leaves the file where it is, said once."""
    try:
        os.rename(path, _destination(directory, name, file_id))
    except FileNotFoundError:
        return
    except OSError as error:
        log.error("could not move %s into %s: %s; it stays where it is", path, directory, error)


class Leftovers(NamedTuple):
    """Files in processing or handled that no handler will finish (see `sweep_processing`)."""

    finished: list[tuple[Path, Path, str, int]]
    unrecorded: list[tuple[Path, str]]


NO_LEFTOVERS = Leftovers([], [])


def _entries(directory: Path) -> dict[int, tuple[Path, str]]:
    """The `{id}__{name}` files of a processing or handled area, by claim id."""
    if not directory.is_dir():
        return {}
    found = {}
    for entry in os.scandir(directory):
        number, _, name = entry.name.partition("__")
        if number.isdigit() and name:
            found[int(number)] = (Path(entry.path), name)
    return found


def sweep_processing(connection: Connection, folder: HotFolderSettings, fence: Fence) -> Leftovers:
    """What is left that no handler will finish: files whose state committed as finished
    (their owner died between the commit and the move), handled files whose outcome was
    never recorded (recorded now, as processed: a handler never runs twice), and files the
    database has no claim for (it failed over and lost its last commits). Listed before the
    query, so a file renamed in after its claim committed is always found with its claim."""
    waiting, handled = _areas(folder)
    if not waiting and not handled:
        return NO_LEFTOVERS
    *writes, (read, params) = _sweep_sql(waiting, handled, fence)
    for sql, values in writes:
        connection.execute(text(sql), values)
    return _leftovers(folder, waiting, handled, connection.execute(text(read), params).all())


Area = dict[int, tuple[Path, str]]


def _areas(folder: HotFolderSettings) -> tuple[Area, Area]:
    """The files in the processing area, and those handled and not yet moved on."""
    return _entries(folder.processing), _entries(folder.path / HANDLED_DIR)


def _sweep_sql(waiting: Area, handled: Area, fence: Fence) -> list[Statement]:
    """Record handled files whose handler is gone without recording them as processed; then
    read the state of every file in both areas (the last statement's rows)."""
    return [
        (
            "UPDATE folder_file AS f SET state = 'processed', error = NULL, "
            "finished_at = clock_timestamp(), handler = NULL, handling_since = NULL, "
            "handler_batch = NULL "
            "WHERE f.id = ANY(CAST(:ids AS bigint[])) AND f.state = 'processing' "
            f"AND (f.handler IS NULL OR {GONE_HANDLER})",
            {"ids": list(handled), "me": fence.me.incarnation},
        ),
        (
            "SELECT id, rel_path, state FROM folder_file WHERE id = ANY(CAST(:ids AS bigint[]))",
            {"ids": list(waiting) + list(handled)},
        ),
    ]


def _leftovers(folder: HotFolderSettings, waiting: Area, handled: Area, rows: Any) -> Leftovers:
    finished, unrecorded = [], []
    states = {row[0]: row for row in rows}
    for area in (waiting, handled):
        for file_id, (path, name) in area.items():
            row = states.get(file_id)
            if row is None or row[1] != name:
                if area is handled:
                    finished.append((path, folder.processed, name, file_id))
                else:
                    unrecorded.append((path, name))
            elif row[2] in ("processed", "failed"):
                target = folder.processed if row[2] == "processed" else folder.failed
                finished.append((path, target, name, file_id))
    return Leftovers(finished, unrecorded)


def settle_leftovers(
    settings: Settings, fence: Fence, folder: HotFolderSettings, leftovers: Leftovers
) -> None:
    """After the transaction that found them: finished files go where their state says,
    unrecorded ones back into the hot folder, and those put back are counted (a write only
    when there are some)."""
    for path, directory, name, file_id in leftovers.finished:
        move_done(path, directory, name, file_id)
    quiet = [
        (path, name)
        for path, name in _unclaimed_for_long(settings, leftovers)
        if not _held_here(fence, folder, path)
    ]
    restored = restore_unrecorded(fence, folder, quiet)
    if restored:
        with transaction(settings) as connection:
            registration.count_restored(connection, fence.me, restored)


_unclaimed_since: dict[Path, float] = {}


def _unclaimed_for_long(settings: Settings, leftovers: Leftovers) -> list[tuple[Path, str]]:
    """The unclaimed files in processing that this process has seen unclaimed for a whole
    lease and a heartbeat: whoever was handling one (a node the database forgot, after a
    standby was promoted without its claims) has seen the epoch go back, or lost its local
    deadline, and its guard has killed the handler by then."""
    wait = settings.longest_lease() + settings.heartbeat_interval
    now = time.monotonic()
    seen = {path for path, _name in leftovers.unrecorded}
    for path in list(_unclaimed_since):
        if path not in seen:
            del _unclaimed_since[path]
    ready = []
    for path, name in leftovers.unrecorded:
        if now - _unclaimed_since.setdefault(path, now) >= wait:
            ready.append((path, name))
    return ready


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


def run_handler(
    folder: HotFolderSettings, path: Path, environment: dict[str, str] | None = None
) -> str | None:
    """Run the folder's handler on `path` (a `command` with `environment` only); return the
    error, or None on success."""
    try:
        if folder.handler:
            load_handler(folder.handler)(path)
            return None
        assert folder.command is not None
        argv = [part.replace("{path}", str(path)) for part in folder.command]
        code, last = run_command(argv, environment, folder.handler_timeout)
        if code is None:
            return f"timed out after {folder.handler_timeout:g} s"
        return f"exit {code}: {last}" if code != 0 else None
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
