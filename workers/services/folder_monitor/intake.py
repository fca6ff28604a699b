"""The scan of each hot folder on the owner, and the dispatch of its batches.

At every beat the owner lists each folder and, in one fenced round trip per folder, records
every arrival as `seen`, adopts a previous owner's claims, claims the files that stayed the
same for the folder's settle time, takes the batches that are due and sweeps the areas.
Only then are the claimed files renamed into processing, and the batches sent
(`send_batch`). A folder that fails for a reason of its own is logged and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import psycopg

from workers.errors import ConfigError, DatabaseUnavailable, StaleEpoch
from workers.fence.fencing import Fence, fenced, fenced_round_trip, reject
from workers.services.folder_monitor.areas import (
    NO_LEFTOVERS,
    Leftovers,
    area_files,
    leftovers_of,
    move_into_processing,
    set_aside,
    settle_leftovers,
)
from workers.services.folder_monitor.ledger import (
    BUSY,
    LOCK_FOLDER,
    Claim,
    adopt_orphans_sql,
    claim_settled_sql,
    in_batches,
    listing_sql,
    refusals_sql,
    release_dead_marks_sql,
    sweep_sql,
    take_batches_sql,
    undo_claims,
)
from workers.services.folder_monitor.names import FolderUnavailable, Listing, list_folder
from workers.settings import HotFolderSettings, Settings
from workers.stores.database import Statement

log = logging.getLogger(__name__)


# Listings this process has already recorded, as (folder, incarnation, epoch, hash of the
# listing): a scan that finds the very same files again only needs to claim the ones that
# have now settled.
_recorded_listings: set[tuple[str, str, int, int]] = set()


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
            log.exception("scan of hot folder %s failed", folder.name)
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
            "hot folder %s unavailable, retrying at the next scan: %s",
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
        _report_refusals(folder, refusals)
    set_aside(fence, folder, found.unusable)
    settle_leftovers(settings, fence, folder, leftovers)
    _recorded_listings.discard(listing)
    if not claimed:
        _recorded_listings.add(listing)
    if adopted:
        log.warning(
            "adopted %d unfinished files of %s at epoch %d (previous owner gone)",
            adopted,
            folder.name,
            fence.epoch,
        )
    for claim in claimed:
        log.info(
            "claimed %s/%s at epoch %d: unchanged for %g s",
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
    waiting, handled = area_files(folder)
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
    sweep = sweep_sql(waiting, handled, fence) if waiting or handled else []
    try:
        results = fenced_round_trip(settings, fence, [*statements, *sweep])
    except psycopg.Error as error:
        if error.sqlstate == BUSY:
            raise FolderBusy(folder.name) from None
        raise
    return Scanned(
        claimed=[Claim(*row) for row in results[marks["claimed"]]],
        batches=in_batches(settings, [row[0] for row in results[marks["batches"]]]),
        leftovers=leftovers_of(folder, waiting, handled, results[-1]) if sweep else NO_LEFTOVERS,
        adopted=len(results[marks["adopted"]]) if "adopted" in marks else 0,
        refusals=[(row[0], row[1]) for row in results[marks["refusals"]]]
        if "refusals" in marks
        else [],
    )


class FolderBusy(Exception):
    """Another scan of the folder holds its lock: this one skips it."""


def _report_refusals(folder: HotFolderSettings, refusals: list[tuple[str, str]]) -> None:
    for name, why in refusals:
        log.warning("refused %s/%s: %s", folder.name, name, why)


def _undo_changed(
    settings: Settings, fence: Fence, folder: HotFolderSettings, changed: list[int]
) -> None:
    log.warning(
        "%d claimed files of %s changed or were replaced before they were taken: "
        "they are seen anew at the next scan",
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


def folder_named(settings: Settings, name: str) -> HotFolderSettings:
    for folder in settings.folders():
        if folder.name == name:
            return folder
    raise ConfigError(f"unknown hot folder {name!r}")
