"""Child processes under the fence: a script or a handler batch runs in a process group of
its own, and the whole group is killed when its time is up or its fence is lost.

One supervisor serves both: it polls the child a few times a second and asks, each time,
whether the child has exited, whether its own timeout has passed, and whether the node may
still act for the service (`local_fence.lost`: the lease could not be renewed in time, or the
service moved on). Killing the group takes the child's own children along.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from workers import local_fence
from workers.fencing import Fence

log = logging.getLogger(__name__)
POLL_SECONDS = 0.05


class Child(Protocol):
    """What the supervisor needs of a child: its pid (also its process group) and `poll`."""

    pid: int

    def poll(self) -> int | None: ...


@dataclass(frozen=True)
class Ending:
    """How a supervised child ended: its exit code, or why it was killed (`killed_for`)."""

    code: int | None
    killed_for: str | None = None
    timed_out: bool = False


class Forked:
    """A child made by `os.fork`, seen through the same `pid` and `poll` as a `Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def kill_group(child: Child) -> None:
    """SIGKILL the child's whole process group (it leads one: `start_new_session`)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def supervise(
    child: Child,
    what: str,
    fence: Fence | None,
    deadline: Callable[[], float | None],
    tick: Callable[[float], None] = time.sleep,
) -> Ending:
    """Wait for `child` (`what` it runs, for the log); kill its group when `deadline()`
    (monotonic) passes or the fence is lost. `tick(seconds)` waits between polls (a caller
    may read the child's output there)."""
    while True:
        code = child.poll()
        if code is not None:
            return Ending(code)
        reason = local_fence.lost(fence) if fence is not None else None
        limit = deadline()
        timed_out = limit is not None and time.monotonic() > limit
        if reason or timed_out:
            who = f"node {fence.me.name}" if fence else "this node"
            why = reason or "its timeout passed"
            log.warning("%s: killed %s (process group %d): %s", who, what, child.pid, why)
            kill_group(child)
            while child.poll() is None:
                time.sleep(0.01)
            return Ending(child.poll(), reason, timed_out and not reason)
        tick(POLL_SECONDS)
