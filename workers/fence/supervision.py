"""Child processes under the fence (invariant 13): every script and handler batch runs below
a guard process of its own, which kills everything below it when the child's time is up, when
the fence is lost, or when the node process that started it dies.

Why a process and not a thread of the worker: a thread dies and freezes with its worker
(`kill -9`, the OOM killer, SIGSTOP), and what it guarded ran on beside the next owner.
The guard:

- leads a session of its own, so a signal to the worker's process group (SIGSTOP, SIGKILL)
  does not reach it, and it is the sub-reaper of its subtree, so a child that daemonizes
  or starts a session of its own stays below it;
- watches the node's processes through pidfds (a process, not the forking thread, which is
  what `PR_SET_PDEATHSIG` would follow) and reads the local deadline and epochs where the
  node's heartbeat keeps them (`local_fence`), so a frozen worker's children stop in time;
- gives its direct children `PR_SET_PDEATHSIG`, so a guard killed outright takes them along;
- whatever happens, kills every process left below it before it exits, then hands its
  result to the worker through a pipe.

The worker never kills: it waits for the guard's result. A guard is set in its own group by
itself (`setsid`) before it starts anything, so no kill can come before its group exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from workers.fence import local_fence
from workers.fence.fencing import Fence

log = logging.getLogger(__name__)
POLL_SECONDS = 0.05
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_node_pids: tuple[int, ...] = ()


class Child(Protocol):
    """What the supervisor needs of a child: its pid and `poll`."""

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


@dataclass(frozen=True)
class Watch:
    """The node processes a guard answers to, each seen through a pidfd."""

    descriptors: tuple[int, ...]

    def gone(self) -> bool:
        """Whether any of them has exited (however: SIGKILL, the OOM killer, a crash)."""
        return bool(select.select(list(self.descriptors), [], [], 0)[0])


def watch_node_process(pid: int) -> None:
    """Name the node's main process, watched by every guard beside the process that forks it
    (a prefork pool child): children die with either."""
    global _node_pids
    _node_pids = (pid,)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent(parent: int) -> None:
    """In a guard's direct child: SIGKILL when the guard dies; exit now if it already did."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(70)


def guarded(work: Callable[[Watch], Any], what: str) -> Any | None:
    """Run `work` in a guard process and return its JSON-able result, or None if the guard
    died without one. `work` gets the `Watch` to pass to `supervise`."""
    watchers = tuple(dict.fromkeys((os.getpid(), *_node_pids)))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the guard process
        os.close(read_end)
        _guard_main(work, watchers, write_end, what)
    os.close(write_end)
    try:
        data = _collect(pid, read_end)
    finally:
        os.close(read_end)
    try:
        return json.loads(data) if data else None
    except ValueError:
        log.error("the guard of %s wrote an unreadable result", what)
        return None


def _collect(pid: int, descriptor: int) -> bytes:
    """Read the guard's result until it has exited (woken by its pidfd). Not until end of
    file: a later guard forked by another thread may hold a copy of the write end."""
    chunks: list[bytes] = []
    guard = os.pidfd_open(pid)
    try:
        while True:
            ready = select.select([descriptor, guard], [], [])[0]
            if descriptor in ready:
                chunk = os.read(descriptor, 65536)
                if chunk:
                    chunks.append(chunk)
                    continue
            if guard in ready or descriptor in ready:
                os.waitpid(pid, 0)
                return b"".join([*chunks, *_drain(descriptor)])
    finally:
        os.close(guard)


def _drain(descriptor: int) -> list[bytes]:
    """What is left in a pipe whose writer has exited."""
    chunks = []
    while select.select([descriptor], [], [], 0)[0]:
        chunk = os.read(descriptor, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return chunks


def _guard_main(
    work: Callable[[Watch], Any], watchers: tuple[int, ...], out: int, what: str
) -> NoReturn:
    """The guard: its own session, sub-reaper of its subtree, watching the node; runs `work`,
    kills whatever is left below it, writes the result."""
    code = 0
    try:
        os.setsid()
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        watch = Watch(tuple(os.pidfd_open(pid) for pid in watchers))
        if os.getppid() != watchers[0]:
            raise ProcessLookupError("the node process is already gone")
        result = work(watch)
        end_subtree()
        with contextlib.suppress(BrokenPipeError):  # the worker is gone: nobody to tell
            _write_all(out, json.dumps(result).encode())
    except BaseException:
        log.exception("the guard of %s failed; everything below it is killed", what)
        code = 70
    finally:
        end_subtree()
        os._exit(code)


def _write_all(descriptor: int, data: bytes) -> None:
    while data:
        data = data[os.write(descriptor, data) :]


def end_subtree() -> None:
    """SIGKILL every process below this one and reap them: children, their children, and any
    that left the process group (the sub-reaper keeps them below)."""
    me = os.getpid()
    while True:
        if not _reap():
            return
        below = list(_descendants(me))
        if not below:
            return
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _reap() -> bool:
    """Reap the children that ended; whether any child is left. With none, nothing is
    below this process: a sub-reaper inherits every orphan of its subtree."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        return False
    return True


def _descendants(root: int) -> Iterable[int]:
    """Live processes below `root`, read from /proc (one pass over every process)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            parents.setdefault(int(fields[1]), []).append(int(entry))
    waiting = [root]
    while waiting:
        for pid in parents.get(waiting.pop(), []):
            yield pid
            waiting.append(pid)


def supervise(
    child: Child,
    what: str,
    fence: Fence | None,
    deadline: Callable[[], float | None],
    tick: Callable[[float], None] = time.sleep,
    watch: Watch | None = None,
) -> Ending:
    """Wait for `child` (`what` it runs, for the log); kill it when `deadline()` (monotonic)
    passes, the fence is lost, or a node process in `watch` is gone. `tick(seconds)` waits
    between polls (a caller may read the child's output there). Its own children are the
    guard's to end (`end_subtree`)."""
    while True:
        code = child.poll()
        if code is not None:
            return Ending(code)
        reason = _lost(fence, watch)
        limit = deadline()
        timed_out = limit is not None and time.monotonic() > limit
        if reason or timed_out:
            why = reason or "its timeout passed"
            log.warning("killed %s (pid %d): %s", what, child.pid, why)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            while child.poll() is None:
                time.sleep(0.01)
            return Ending(child.poll(), reason, timed_out and not reason)
        tick(POLL_SECONDS)


def _lost(fence: Fence | None, watch: Watch | None) -> str | None:
    if watch is not None and watch.gone():
        return "the node's worker process is gone"
    return local_fence.lost(fence) if fence is not None else None


def run_command(
    argv: list[str], environment: dict[str, str] | None, timeout: float
) -> tuple[int | None, str]:
    """Run a command in a process group of its own (set by the child before it runs
    anything) and kill the whole group when it ends or times out: what it started does not
    outlive it. Returns its exit code (None when it timed out) and the last line it wrote."""
    process = subprocess.Popen(
        argv,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        stdout, stderr, code = "", "", None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    last = (stderr or stdout).strip().splitlines()[-1:] or [""]
    return code, last[0]
