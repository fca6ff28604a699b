"""The handler child: where a folder's handler runs, and the pipe it reports on.

A batch's guard (`workers.fence.supervision.guarded`) forks one child that runs the
handler on each file and writes a line per step on a pipe: `S id` (started), `O id`
(handled, and renamed into `.handled/`), `E id error`. The guard reads the lines, kills the
child's process group at a file's timeout or as soon as the node may no longer act for the
service, and turns what it read into each file's `Outcome`.

A handler is `package.module:function` or a `command`; the default one, `accept`, takes
the file as it is (`DEFAULT_HANDLER`; the name it had before the service's move still
resolves to it: configuration files name it).
"""

from __future__ import annotations

import importlib
import logging
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.errors import ConfigError
from workers.fence.fencing import Fence
from workers.fence.supervision import (
    Forked,
    Watch,
    die_with_parent,
    guarded,
    run_command,
    supervise,
)
from workers.services.folder_monitor.areas import (
    HANDLED_DIR,
    handled_path,
    hold_files,
    processing_path,
    same_file,
)
from workers.services.folder_monitor.ledger import Claim, Outcome
from workers.settings import HotFolderSettings

log = logging.getLogger(__name__)


DEFAULT_HANDLER = "workers.services.folder_monitor:accept"
RENAMED = {"workers.folder_monitor:accept": DEFAULT_HANDLER}
"""Handlers as configuration files named them before the folder monitor moved, and now."""


def accept(path: Path) -> None:
    """The default handler of `FAILOVER_HOT_FOLDER`: take the file as it is."""


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
    """`package.module:function`, imported (a name in `RENAMED` as it is now); a
    configuration error if it cannot be."""
    module_name, _, attribute = RENAMED.get(spec, spec).partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"handler {spec!r} cannot be imported: {error}") from None
    if not callable(handler):
        raise ConfigError(f"handler {spec!r} is not callable")
    return handler  # type: ignore[no-any-return]


def run_children(
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
