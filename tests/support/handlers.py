"""Handlers for hot-folder tests: each call is appended, one line, to $FAILOVER_TEST_HANDLER_LOG."""

from __future__ import annotations

import os
import time
from pathlib import Path


def record(path: Path) -> None:
    """Log `<original name> <pid> <parent pid>`: a file handled twice shows up twice."""
    name = path.name.split("__", 1)[1]
    line = f"{name} {os.getpid()} {os.getppid()}\n".encode()
    descriptor = os.open(
        os.environ["FAILOVER_TEST_HANDLER_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def slow(path: Path) -> None:
    time.sleep(float(os.environ.get("FAILOVER_TEST_HANDLER_SECONDS", "0.005")))
    record(path)


def fail(path: Path) -> None:
    record(path)
    raise RuntimeError("failing on purpose")


def workers_that_handled(log: Path, workers: set[int]) -> set[int]:
    """Which of the `workers` (main processes) ran the handler: in their own process (threads
    pool) or in a pool child of theirs (prefork)."""
    found = set()
    for line in log.read_text().splitlines() if log.exists() else []:
        pid, parent = (int(part) for part in line.split()[1:3])
        found.add(pid if pid in workers else parent)
    return found


def handled(log: Path) -> dict[str, int]:
    """How many times each file name was handled, from the log."""
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            name = line.split(" ", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def lose_claim(path: Path) -> None:
    """Record the call, then delete the file's claim as a database failover that lost it
    would (the claim's id is the file's prefix in the processing area)."""
    import psycopg

    record(path)
    file_id = int(path.name.split("__", 1)[0])
    with psycopg.connect(os.environ["FAILOVER_TEST_LOSE_CLAIM_URL"], autocommit=True) as db:
        db.execute("DELETE FROM folder_file WHERE id = %s", (file_id,))
