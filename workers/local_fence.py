"""What a node knows on its own host of its hold on its services, without asking anyone.

The epoch fence protects what commits in the database. A child process (a script, a
handler batch) acts outside it, so each node also keeps, in its incarnation's local state:

- the deadline of its lease on this host's monotonic clock: the time its last successful
  renewal was *sent* plus its lease. The database counts the lease from the commit, later
  than the send, so this deadline passes no later than the database's (clock rates aside);
- the epoch of each service it owns, as its last heartbeat read it (or none once released).

`lost` says why work fenced at an epoch must stop now; supervisors of child processes ask it
a few times a second and kill the process group when it answers. Before any heartbeat has
recorded anything (a process that is not a node, a test calling in process) nothing is lost.
"""

from __future__ import annotations

import time

from workers import local_state
from workers.fencing import Fence

DEADLINE = "lease_deadline"


def renewed(incarnation: str, sent_at: float, lease: float) -> None:
    """A renewal sent at `sent_at` (monotonic) committed: the lease now holds until then + lease."""
    local_state.remember(incarnation, DEADLINE, sent_at + lease)


def owns(incarnation: str, epochs: dict[str, int], mine: set[str]) -> None:
    """Record each service's epoch as the last heartbeat read it, and whether it is ours."""
    for service, epoch in epochs.items():
        for key, value in ((f"epoch.{service}", epoch), (f"owns.{service}", service in mine)):
            if local_state.recall(incarnation, key) != float(value):
                local_state.remember(incarnation, key, float(value))


def released(incarnation: str, epochs: dict[str, int]) -> None:
    """The node gave these services up (a graceful stop) at these epochs: their work stops."""
    owns(incarnation, epochs, set())


def lost(fence: Fence) -> str | None:
    """Why work done under `fence` must stop now, or None while it may go on."""
    me = fence.me.incarnation
    deadline = local_state.recall(me, DEADLINE)
    now = time.monotonic()
    if deadline is not None and now > deadline:
        return f"its lease could not be renewed (it ran out {now - deadline:.1f} s ago)"
    if not fence.owner_only:
        return None
    epoch = local_state.recall(me, f"epoch.{fence.service}")
    if epoch is None or epoch < fence.epoch:
        return None
    if epoch > fence.epoch:
        return f"{fence.service} is now at epoch {int(epoch)}"
    if local_state.recall(me, f"owns.{fence.service}") == 0.0:
        return f"it no longer owns {fence.service}"
    return None
