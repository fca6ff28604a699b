"""Handlers for hot-folder tests: each call is appended, one line, to $TEST_HANDLER_LOG."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

PASSTHROUGH = ["TEST_HANDLER_LOG", "TEST_HANDLER_SECONDS", "TEST_SPAN_LOG", "TEST_LOSE_CLAIM_URL"]
"""What the test handlers read: a child gets only the variables a node passes through."""


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def record(path: Path) -> None:
    """Log `<original name> <pid> <parent> <grandparent> <great-grandparent> <monotonic>`: a
    file handled twice shows up twice (handlers run in a child of a guard forked by the
    worker, or by its pool process)."""
    name = path.name.split("__", 1)[1]
    parent = os.getppid()
    grandparent = _parent_of(parent)
    ancestors = f"{parent} {grandparent} {_parent_of(grandparent)}"
    line = f"{name} {os.getpid()} {ancestors} {time.monotonic()}\n"
    _append(line.encode())


def _append(line: bytes) -> None:
    descriptor = os.open(os.environ["TEST_HANDLER_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def slow(path: Path) -> None:
    time.sleep(float(os.environ.get("TEST_HANDLER_SECONDS", "0.005")))
    record(path)


def fail(path: Path) -> None:
    record(path)
    raise RuntimeError("failing on purpose")


def workers_that_handled(log: Path, workers: set[int]) -> set[int]:
    """Which of the `workers` (main processes) ran the handler: in their own process (threads
    pool) or in a pool child of theirs (prefork)."""
    found = set()
    for line in log.read_text().splitlines() if log.exists() else []:
        found |= {int(part) for part in line.split()[1:5]} & workers
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
    with psycopg.connect(os.environ["TEST_LOSE_CLAIM_URL"], autocommit=True) as db:
        db.execute("DELETE FROM folder_file WHERE id = %s", (file_id,))


def _alive(pid: int) -> bool:
    """Whether a process still runs (a zombie has finished running)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def span(path: Path) -> None:
    """Log `start` and `end` (name, node, pid, monotonic stamp) to $TEST_SPAN_LOG
    around a sleep of $TEST_HANDLER_SECONDS; log `overlap` if an earlier run of
    this file is still alive when this one starts. Then `record` the completed run."""
    name = path.name.split("__", 1)[1]
    log = Path(os.environ["TEST_SPAN_LOG"])
    node = os.environ.get("FAILOVER_NODE_NAME", "-")
    running = [
        int(line.split()[3])
        for line in (log.read_text().splitlines() if log.exists() else [])
        if line.split()[:2] == ["start", name]
    ]
    with log.open("a") as out:
        if any(_alive(pid) for pid in running):
            out.write(f"overlap {name} {node} {os.getpid()} {time.monotonic()}\n")
        out.write(f"start {name} {node} {os.getpid()} {time.monotonic()}\n")
    time.sleep(float(os.environ.get("TEST_HANDLER_SECONDS", "1")))
    with log.open("a") as out:
        out.write(f"end {name} {node} {os.getpid()} {time.monotonic()}\n")
    record(path)


def spans(log: Path) -> dict[str, list[str]]:
    """Each kind of span line (`start`, `end`, `overlap`) with the file names it names."""
    found: dict[str, list[str]] = {"start": [], "end": [], "overlap": []}
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, name = line.split()[:2]
        found[kind].append(name)
    return found


def script_span(log: str) -> None:
    """A long script: log `start <pid>` (after `overlap <pid>` if an earlier run is still
    alive), sleep a minute, log `end <pid>`."""
    path = Path(log)
    earlier = [
        int(line.split()[1])
        for line in (path.read_text().splitlines() if path.exists() else [])
        if line.startswith("start ")
    ]
    with path.open("a") as out:
        if any(_alive(pid) for pid in earlier):
            out.write(f"overlap {os.getpid()}\n")
        out.write(f"start {os.getpid()} {time.monotonic()}\n")
    time.sleep(60)
    with path.open("a") as out:
        out.write(f"end {os.getpid()}\n")


def _hold(lock_path: str, log: Path, label: str) -> int:
    """Take the run's lock (an `overlap` line first if an earlier run, or anything it
    started, still holds it); the descriptor, to hand to the processes the run starts."""
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with log.open("a") as out:
            out.write(f"overlap {label} {os.getpid()} {time.monotonic()}\n")
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def held_span(path: Path) -> None:
    """`span`, witnessed by a lock: the run holds an exclusive lock on its file's name, and
    so does a child process it starts (a `sleep`), so an earlier run counts as alive while
    any process of it lives. Logs `overlap`, `start`, `end` to $TEST_SPAN_LOG."""
    name = path.name.split("__", 1)[1]
    log = Path(os.environ["TEST_SPAN_LOG"])
    descriptor = _hold(f"{log}.{name}.lock", log, name)
    with log.open("a") as out:
        out.write(f"start {name} - {os.getpid()} {time.monotonic()}\n")
    helper = subprocess.Popen(["sleep", "600"], pass_fds=(descriptor,))
    time.sleep(float(os.environ.get("TEST_HANDLER_SECONDS", "1")))
    helper.kill()
    helper.wait()
    with log.open("a") as out:
        out.write(f"end {name} - {os.getpid()} {time.monotonic()}\n")
    record(path)


def held_script_span(log: str) -> None:
    """`script_span`, witnessed by a lock held by the script and a child it starts."""
    path = Path(log)
    descriptor = _hold(f"{log}.lock", path, "script")
    with path.open("a") as out:
        out.write(f"start {os.getpid()} {time.monotonic()}\n")
    subprocess.Popen(["sleep", "600"], pass_fds=(descriptor,))
    time.sleep(60)
    with path.open("a") as out:
        out.write(f"end {os.getpid()}\n")


def environment(path: Path) -> None:
    """Log the names of the variables the handler sees, one line per file."""
    _append(f"{path.name} {' '.join(sorted(os.environ))}\n".encode())


def timed_script(log: str, seconds: float) -> None:
    """A script run of `seconds`: log `start <pid>`, sleep, log `end <pid>` (a run killed
    leaves a start without an end)."""
    path = Path(log)
    with path.open("a") as out:
        out.write(f"start {os.getpid()}\n")
    time.sleep(seconds)
    with path.open("a") as out:
        out.write(f"end {os.getpid()}\n")
