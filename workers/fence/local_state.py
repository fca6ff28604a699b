"""What a node's processes share on their own host: waiting messages and the last cycle.

The worker's main process (where the beat runs) and its pool children (where the tasks
run) share nothing but the host, so they share a small folder per incarnation:

- one mark per kind of message (the heartbeat, the service work) while a message of that
  kind waits in the node's queue (`workers.queues.backlog` says how it is used);
- a lock per kind of work that must not run twice at once on a node (the service work: a
  slow one is not joined by the next, which would take the pool's last free slots);
- the heartbeat's last measured cycle, so the next one can store it and warn once.

Times are this host's monotonic clock (`CLOCK_MONOTONIC`, shared by its processes): they
place local deadlines only, never compared with another host's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def state_dir(incarnation: str) -> Path:
    """The folder this incarnation's processes share (created on first use)."""
    path = Path(tempfile.gettempdir()) / f"failover-{incarnation}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def forget(incarnation: str) -> None:
    """Remove the incarnation's folder when its node stops."""
    shutil.rmtree(Path(tempfile.gettempdir()) / f"failover-{incarnation}", ignore_errors=True)


def _read_float(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def _write_float(path: Path, value: float) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(repr(value))
    os.replace(partial, path)


def waiting_for(incarnation: str, kind: str) -> float | None:
    """Seconds since a message of `kind` was marked waiting, or None if none is."""
    sent = _read_float(state_dir(incarnation) / f"{kind}.waiting")
    return None if sent is None else time.monotonic() - sent


def mark_waiting(incarnation: str, kind: str) -> None:
    """A message of `kind` is about to be sent: it waits until `taken`."""
    _write_float(state_dir(incarnation) / f"{kind}.waiting", time.monotonic())


def taken(incarnation: str, kind: str) -> None:
    """The message of `kind` left the queue: the next one may be sent."""
    with contextlib.suppress(OSError):
        (state_dir(incarnation) / f"{kind}.waiting").unlink()


@contextlib.contextmanager
def alone(incarnation: str, kind: str, wait: float = 0.0) -> Iterator[bool]:
    """Hold the node's lock for `kind` if no other task of this node holds it (or lets it go
    within `wait` seconds): yields whether it does. A lock of the host's kernel (`flock`),
    so it dies with its holder."""
    with (state_dir(incarnation) / f"{kind}.running").open("a") as handle:
        if not _lock_within(handle, wait):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


LOCK_POLL = 0.02


def _lock_within(handle: Any, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL)


def remember(incarnation: str, name: str, value: float) -> None:
    """Keep a measurement for this incarnation's next heartbeat."""
    with contextlib.suppress(OSError):
        _write_float(state_dir(incarnation) / f"{name}.value", value)


def recall(incarnation: str, name: str) -> float | None:
    """The measurement kept by `remember`, or None."""
    return _read_float(state_dir(incarnation) / f"{name}.value")


def take_turn(incarnation: str, kind: str, every: float | None) -> bool:
    """Whether `kind` may start now on this node, at most once per `every` seconds (None:
    each time); when it may, its start is stamped. Callers hold `alone(kind)`."""
    path = state_dir(incarnation) / f"{kind}.started"
    last = _read_float(path)
    now = time.monotonic()
    if every is not None and last is not None and now - last < every:
        return False
    with contextlib.suppress(OSError):
        _write_float(path, now)
    return True


def remember_record(incarnation: str, name: str, record: dict[str, Any]) -> None:
    """Keep a small record (JSON) for this incarnation's processes, replaced atomically."""
    path = state_dir(incarnation) / f"{name}.json"
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        partial.write_text(json.dumps(record))
        os.replace(partial, path)


def recall_record(incarnation: str, name: str) -> dict[str, Any] | None:
    """The record kept by `remember_record`, or None."""
    try:
        found = json.loads((state_dir(incarnation) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


@contextlib.contextmanager
def exclusive(incarnation: str, name: str) -> Iterator[None]:
    """Hold the node's lock for `name` (waiting for it): a read, compare and write of a
    record by one process at a time."""
    with (state_dir(incarnation) / f"{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def holding(incarnation: str, name: str) -> Iterator[None]:
    """Mark `name` as in progress on this host while the block runs (a file locked by the
    holder, and by any process it forks meanwhile: the mark ends with the last of them)."""
    path = state_dir(incarnation) / f"{name}.held"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()


def held(incarnation: str, prefix: str) -> list[str]:
    """The names starting with `prefix` that some process of this host still holds."""
    found = []
    for path in state_dir(incarnation).glob(f"{prefix}*.held"):
        try:
            descriptor = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            found.append(path.name.removesuffix(".held"))
        finally:
            os.close(descriptor)
    return found


def hold_slots(incarnation: str, name: str, slots: list[int]) -> set[int]:
    """Lock each of `slots` of the record `name` for the rest of this process's life (POSIX
    record locks: one file holds many slots, such as a folder's files by id; they are not
    inherited by children and end with this process); the slots it got, without those
    another process holds."""
    descriptor = os.open(state_dir(incarnation) / f"{name}.slots", os.O_RDWR | os.O_CREAT, 0o600)
    got = set()
    for slot in slots:
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
        except OSError:
            continue
        got.add(slot)
    return got


def slot_held(incarnation: str, name: str, slot: int) -> bool:
    """Whether another process holds slot `slot` of `name` (see `hold_slot`) right now."""
    try:
        descriptor = os.open(state_dir(incarnation) / f"{name}.slots", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
    except OSError:
        return True
    else:
        fcntl.lockf(descriptor, fcntl.LOCK_UN, 1, slot)
        return False
    finally:
        os.close(descriptor)
