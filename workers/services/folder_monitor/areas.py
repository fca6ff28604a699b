"""The folder's areas on disk, and moving files between them.

A claimed file is renamed from the hot folder into the processing area (`{id}__{name}`),
after checking (`lstat`, no symlink followed) that it is still the very file claimed; a
handled one into `.handled/` at once (so a crash never re-runs it); then, once its outcome
committed, into processed/ or failed/. Every move is a rename within one filesystem.

The sweep recovers what no handler will finish: files whose outcome committed but were not
moved, handled files whose outcome was never recorded, and files in processing the database
has no claim for (put back into the hot folder once no handler can hold them). A batch's
guard holds its files on this host (`hold_files`), so the sweep never takes one still
being handled here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    text,
)

from workers.fence import local_state
from workers.fence.fencing import Fence
from workers.services.folder_monitor.ledger import Claim, Outcome, sweep_sql
from workers.settings import HotFolderSettings, Settings, timing
from workers.stores import registration
from workers.stores.database import transaction

log = logging.getLogger(__name__)


HANDLED_DIR = ".handled"


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


def _destination(directory: Path, name: str, file_id: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    return target if not target.exists() else directory / f"{name}.{file_id}"


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
    waiting, handled = area_files(folder)
    if not waiting and not handled:
        return NO_LEFTOVERS
    *writes, (read, params) = sweep_sql(waiting, handled, fence)
    for sql, values in writes:
        connection.execute(text(sql), values)
    return leftovers_of(folder, waiting, handled, connection.execute(text(read), params).all())


Area = dict[int, tuple[Path, str]]


def area_files(folder: HotFolderSettings) -> tuple[Area, Area]:
    """The files in the processing area, and those handled and not yet moved on."""
    return _entries(folder.processing), _entries(folder.path / HANDLED_DIR)


def leftovers_of(folder: HotFolderSettings, waiting: Area, handled: Area, rows: Any) -> Leftovers:
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
        if not held_here(fence, folder, path)
    ]
    restored = restore_unrecorded(folder, quiet)
    if restored:
        with transaction(settings) as connection:
            registration.count_restored(connection, fence.me, restored)


_unclaimed_since: dict[Path, float] = {}


def _unclaimed_for_long(settings: Settings, leftovers: Leftovers) -> list[tuple[Path, str]]:
    """The unclaimed files in processing that this process has seen unclaimed for a whole
    lease and a heartbeat: whoever was handling one (a node the database forgot, after a
    standby was promoted without its claims) has seen the epoch go back, or lost its local
    deadline, and its guard has killed the handler by then."""
    wait = timing.surely_gone_after(settings)
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


def restore_unrecorded(folder: HotFolderSettings, files: list[tuple[Path, str]]) -> int:
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
                "%s/%s is in processing with no claim in the database, and a newer "
                "file of that name waits in the hot folder: left in %s for an operator",
                folder.name,
                name,
                path,
            )
        except FileNotFoundError:
            continue
    if restored:
        log.warning(
            "put %d files of %s back into the hot folder: the database has no claim "
            "for them (it failed over without its last commits); they will be handled again",
            restored,
            folder.name,
        )
    return restored


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


def locate(folder: HotFolderSettings, claim: Claim) -> str | None:
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


def hold_files(fence: Fence, folder: HotFolderSettings, ids: list[int]) -> set[int]:
    """Hold claimed files on this node for the life of this process (a batch's guard); the
    ids it got (another batch of this node may hold the others)."""
    return local_state.hold_slots(fence.me.incarnation, _folder_key(folder), ids)


def _folder_key(folder: HotFolderSettings) -> str:
    return "files-" + hashlib.sha256(folder.name.encode()).hexdigest()[:16]


def held_here(fence: Fence, folder: HotFolderSettings, path: Path) -> bool:
    """Whether a batch of this node still handles the file at `path` (`{id}__{name}`),
    whatever the database says of its claim."""
    number = path.name.partition("__")[0]
    return number.isdigit() and local_state.slot_held(
        fence.me.incarnation, _folder_key(folder), int(number)
    )
