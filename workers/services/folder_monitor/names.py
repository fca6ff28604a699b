"""Listing a hot folder and checking the names found in it: no database, no moves.

A scan lists each folder with `os.scandir` (inotify does not fire on NFS or SMB) and keeps
the regular files its patterns want, each with its identity on disk (size, mtime, device,
inode). Symlinks are refused without being followed; names the ledger cannot store (not
UTF-8) or the processing area cannot extend (`{id}__{name}` too long) are set aside.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
from typing import NamedTuple

from workers.settings import HotFolderSettings

log = logging.getLogger(__name__)


ID_ROOM = len(str(2**63)) + len("__")
"""The bytes a processing name (`{id}__{name}`) adds to the file's own name."""


class Arrival(NamedTuple):
    """A regular file in a hot folder, with its identity on disk."""

    name: str
    size: int
    mtime_ns: int
    dev: int
    inode: int


class FolderUnavailable(Exception):
    """The hot folder cannot be listed (a share that went away): retried at the next scan."""


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
