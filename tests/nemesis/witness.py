"""The workload's witness: a handler or a script run that holds a lock while anything it
started lives, and logs its start and end (one JSON line, one O_APPEND write) to a history.

Run by path, with the standard library only (a child of a node gets a bare environment):
`python witness.py HISTORY LOCKS SECONDS NODE handler|script KEY`. For a handler, KEY is the
file's path in the processing area (`<id>__<name>`); for a script, the script's name.

If the lock is taken, an earlier run of the same file or script is still alive: it logs
`overlap` (with the holder's pid) and waits for the lock, so the history shows both. The lock
fd is inherited by a `sleep` child, so a run killed alone while its child lives still holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def append(history: Path, **fields: object) -> None:
    """Append one event, stamped with both clocks, in one atomic write."""
    line = json.dumps({**fields, "pid": os.getpid(), "mono": time.monotonic(), "wall": time.time()})
    descriptor = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (line + "\n").encode())
    finally:
        os.close(descriptor)


def subject(kind: str, key: str) -> tuple[str, int | None]:
    """The name a lock is per (a file's original name, or the script's) and the file's id."""
    if kind != "handler":
        return key, None
    file_id, _, name = Path(key).name.partition("__")
    return name, int(file_id) if file_id.isdigit() else None


def take_lock(history: Path, locks: Path, event: dict[str, object]) -> int:
    """Open and lock the subject's lock file; log `overlap` first if another run holds it."""
    name = f"{event['kind']}-{event['key']}"
    descriptor = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (locks / f"{name}.pid").read_text().strip() or "?"
        append(history, event="overlap", holder=holder, **event)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    (locks / f"{name}.pid").write_text(str(os.getpid()))
    return descriptor


def main(argv: list[str]) -> int:
    """Lock, log start, hold the lock in a child for SECONDS, log end."""
    history, locks, seconds, node, kind, key = argv
    name, file_id = subject(kind, key)
    event: dict[str, object] = {"kind": kind, "key": name, "node": node, "file_id": file_id}
    descriptor = take_lock(Path(history), Path(locks), event)
    append(Path(history), event="start", parent=os.getppid(), **event)
    child = subprocess.Popen(["sleep", seconds], pass_fds=(descriptor,))
    append(Path(history), event="child", child=child.pid, **event)
    child.wait()
    append(Path(history), event="end", **event)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
