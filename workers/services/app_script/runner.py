"""Running a script: the guarded child process, and each run's start and end in the ledger.

Only scripts declared in the settings can run: a task carries a script's name, never a
command. A run is recorded in the ledger (fenced by the owner's epoch) before it starts,
so a stale owner's run is refused before anything happens; its end is recorded whatever
happens, fenced by its own row. The script runs below a guard (`supervision.guarded`) with
only a child's environment: it and all it started are killed at its timeout, as soon as
the node may no longer act for the service, and when the node's worker dies. One run of a
script at a time: in the database (`NONE_RUNNING`), and on the host (`_alone_on_node`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from workers.fence import local_fence, local_state
from workers.fence.children import child_environment
from workers.fence.fencing import Fence, fenced_round_trip, persistently, reject
from workers.fence.supervision import Watch, die_with_parent, end_subtree, guarded, supervise
from workers.services.app_script.ledger import (
    NONE_RUNNING,
    RunResult,
    close_lost_sql,
    end_sql,
    lock_sql,
    start_sql,
    starting_sql,
)
from workers.settings import ScriptSettings, Settings, timing

log = logging.getLogger(__name__)


def execute(
    script: ScriptSettings, lines: int, fence: Fence | None = None, passthrough: Sequence[str] = ()
) -> RunResult:
    """Run the script's argv (no shell) below a guard (`supervision.guarded`), with only the
    environment a child gets (`workers.fence.children`): it and all it started are killed at the
    timeout, as soon as the node may no longer act for the service (`fence`), when the
    node's worker dies, and when the script ends."""
    what = f"script {' '.join(script.argv)[:80]}"

    def in_guard(watch: Watch) -> dict[str, Any]:
        return asdict(_run_in_guard(script, lines, fence, passthrough, what, watch))

    result = guarded(in_guard, what)
    if result is None:
        return RunResult("killed", None, "(killed: its guard process died)", "its guard died")
    return RunResult(**result)


ALIVE_HERE = "(not started: a run of this script is still alive on this node)"


def _alone_on_node(fence: Fence, script: ScriptSettings) -> bool:
    """Hold, for the life of this guard, the node's lock on the script (by its argv): False
    if an earlier run of it still lives here. The database may have lost that run's record
    (a standby promoted without its last writes); the host has not."""
    slot = int.from_bytes(hashlib.sha256("\0".join(script.argv).encode()).digest()[:7], "big")
    return bool(local_state.hold_slots(fence.me.incarnation, "scripts", [slot]))


def _run_in_guard(
    script: ScriptSettings,
    lines: int,
    fence: Fence | None,
    passthrough: Sequence[str],
    what: str,
    watch: Watch,
) -> RunResult:
    """In the guard: start the script, keep the tail of its output, stop it in time."""
    started = time.monotonic()
    guard = os.getpid()
    if fence is not None and not _alone_on_node(fence, script):
        return RunResult("failed", None, ALIVE_HERE)
    try:
        process = subprocess.Popen(
            script.argv,
            cwd=script.cwd,
            env=child_environment(script.env, passthrough),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            preexec_fn=lambda: die_with_parent(guard),
        )
    except OSError as error:
        return RunResult("failed", None, f"could not start: {error}")
    tail: deque[str] = deque(maxlen=lines)
    reader = threading.Thread(target=lambda: tail.extend(process.stdout or []), daemon=True)
    reader.start()
    ending = supervise(process, what, fence, lambda: started + script.timeout, watch=watch)
    end_subtree()
    reader.join(timeout=2)
    output = "".join(tail)[-8000:]
    if ending.killed_for:
        why = ending.killed_for
        return RunResult("killed", ending.code, f"{output}(killed: {why})", why)
    if ending.timed_out:
        return RunResult("timeout", ending.code, output)
    return RunResult("succeeded" if ending.code == 0 else "failed", ending.code, output)


def run_scheduled(settings: Settings, name: str, fence: Fence, run_id: int) -> RunResult | None:
    """Execute a run the owner's service work recorded, only if this node still owns the
    service at that epoch (checked under the fence just before it starts, in one round trip;
    `StaleEpoch` otherwise) and the run was not closed meanwhile (None then)."""
    (still,) = fenced_round_trip(settings, fence, [starting_sql(run_id, fence)])
    return run_recorded(settings, name, fence, run_id) if still else None


def run_recorded(settings: Settings, name: str, fence: Fence, run_id: int) -> RunResult:
    """Execute a run whose start is already recorded, and record its end whatever happens
    (one round trip, tried again while the database is unavailable)."""
    script = settings.script(name)
    log.info("running script %s (run %d) at epoch %d", name, run_id, fence.epoch)
    try:
        result = execute(
            script, settings.script_output_lines, fence, settings.child_env_passthrough
        )
    except Exception as error:
        result = RunResult("failed", None, f"{type(error).__name__}: {error}")
    (recorded,) = persistently(settings, [end_sql(run_id, result, fence.me)])
    log.log(
        logging.INFO if result.status == "succeeded" else logging.WARNING,
        "script %s (run %d) %s, exit code %s%s",
        name,
        run_id,
        result.status,
        result.exit_code,
        ""
        if result.status != "killed"
        else f": {result.output_tail.rsplit('(killed: ', 1)[-1][:-1]}",
    )
    if not recorded:
        reject(settings, fence, f"the end of run {run_id} of {name}: another owner closed it")
    return result


def run_now(settings: Settings, name: str, fence: Fence) -> dict[str, Any]:
    """An on-demand run (trigger `manual`), refused before it starts if the fence fails or a
    run of the script is in progress: its start in one round trip, its end in one more."""
    script = settings.script(name)
    left = local_fence.holding_off(settings)
    if left:
        why = f"its database connection broke: no new work for {left:.1f} s"
        return {"run": None, "status": "refused", "exit_code": None, "output_tail": why}
    lost = timing.run_lost_after(settings, script.timeout)
    *_, started = fenced_round_trip(
        settings,
        fence.to_start(),
        [
            lock_sql(name),
            close_lost_sql(name, fence, lost),
            start_sql(name, fence, "manual", None, NONE_RUNNING),
        ],
    )
    if not started:
        why = f"a run of {name} is still in progress (see failover history)"
        return {"run": None, "status": "refused", "exit_code": None, "output_tail": why}
    run_id = int(started[0][0])
    result = run_recorded(settings, name, fence, run_id)
    return {
        "run": run_id,
        "status": result.status,
        "exit_code": result.exit_code,
        "output_tail": result.output_tail,
    }
