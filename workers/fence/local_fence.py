"""What a node knows on its own host of its hold on its services, without asking anyone
(invariant 13).

The epoch fence protects what commits in the database. A child process (a script, a
handler batch) acts outside it, so each node also keeps, in its incarnation's local state:

- the deadline of its lease on this host's monotonic clock, kept inside what the database
  can believe: the *previous* successful renewal's send time plus the lease, less the
  supervisor's poll and `fence_margin`. Heartbeats commit asynchronously, so a failover
  onto a standby may lose the last renewal (not more, while the standby's lag stays under
  a heartbeat interval); the database counts a lease from the commit, later than the send;
  and the margin covers the clock offset between a primary and its standby;
- for each service, the epoch this node last knew and whether it owned it then, recorded
  by the heartbeat that read it, and by this node's own takeovers, moves and releases as
  soon as they commit. Each record carries the monotonic time its read was sent, and an
  older read never replaces a newer record: a heartbeat that read the service before this
  node's own takeover committed does not undo it.

`lost` says why work fenced at an epoch must stop now: the deadline passed, or the epoch
known now differs from the work's, higher *or lower* (a standby promoted without the last
move says an older owner holds the service again). Guards of child processes ask it a
few times a second. Before any heartbeat has recorded anything (a process that is not a
node, a test calling in process) nothing is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from workers.fence import local_state
from workers.fence.fencing import Fence
from workers.settings import Settings, timing
from workers.stores import database

DEADLINE = "lease_deadline"
LAST_SENT = "last_renewal_sent"
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Held:
    """A service's epoch as this node last knew it, whether it owned it, and when (the
    monotonic send time of the read, or the time its own change committed)."""

    epoch: int
    owned: bool
    at: float


def renewed(incarnation: str, sent_at: float, lease: float, interval: float, margin: float) -> None:
    """A renewal sent at `sent_at` (monotonic) committed: work may go on until the previous
    renewal's send time + lease - poll - margin (the first renewal counts one interval back)."""
    previous = local_state.recall(incarnation, LAST_SENT)
    base = previous if previous is not None else sent_at - interval
    local_state.remember(incarnation, LAST_SENT, sent_at)
    local_state.remember(incarnation, DEADLINE, base + lease - POLL_SECONDS - margin)


def deadline(incarnation: str) -> float | None:
    """The local deadline (monotonic), or None before the first renewal."""
    return local_state.recall(incarnation, DEADLINE)


def observed(
    incarnation: str,
    epochs: dict[str, int],
    mine: set[str],
    sent_at: float,
    handing: frozenset[str] = frozenset(),
) -> None:
    """A heartbeat sent at `sent_at` read these epochs, the services in `mine` as this node's,
    and those in `handing` handing over (their new work waits; their running work goes on)."""
    for service, epoch in epochs.items():
        _record(incarnation, service, Held(epoch, service in mine, sent_at))
        local_state.remember(incarnation, f"{HANDING}{service}", float(service in handing))


HANDING = "handing_over."


def handing_over(incarnation: str, service: str) -> bool:
    """Whether the last heartbeat read `service` as handing over: start nothing new for it."""
    return bool(local_state.recall(incarnation, f"{HANDING}{service}"))


def acquired(incarnation: str, service: str, epoch: int) -> None:
    """This node's takeover or move of `service` at `epoch` committed just now."""
    _record(incarnation, service, Held(epoch, True, time.monotonic()))


def released(incarnation: str, epochs: dict[str, int]) -> None:
    """The node gave these services up (a graceful stop) at these epochs: their work stops."""
    for service, epoch in epochs.items():
        _record(incarnation, service, Held(epoch, False, time.monotonic()))


def held(incarnation: str, service: str) -> Held | None:
    """The service as this node last knew it, or None if it never recorded it."""
    record = local_state.recall_record(incarnation, f"fence.{service}")
    if record is None:
        return None
    return Held(int(record["epoch"]), bool(record["owned"]), float(record["at"]))


def _record(incarnation: str, service: str, news: Held) -> None:
    """Keep `news` unless it says nothing new or a newer record stands."""
    current = held(incarnation, service)
    if current is not None and (current.epoch, current.owned) == (news.epoch, news.owned):
        return
    with local_state.exclusive(incarnation, f"fence.{service}"):
        current = held(incarnation, service)
        if current is not None and current.at > news.at:
            return
        record = {"epoch": news.epoch, "owned": news.owned, "at": news.at}
        local_state.remember_record(incarnation, f"fence.{service}", record)


def lost(fence: Fence) -> str | None:
    """Why work done under `fence` must stop now, or None while it may go on."""
    me = fence.me.incarnation
    limit = deadline(me)
    now = time.monotonic()
    if limit is not None and now > limit:
        late = now - limit
        return f"its lease could not be renewed in time (local deadline passed {late:.1f} s ago)"
    if not fence.owner_only:
        return None
    known = held(me, fence.service)
    if known is None:
        return None
    if known.epoch > fence.epoch:
        return f"{fence.service} is now at epoch {known.epoch}"
    if known.epoch < fence.epoch:
        return (
            f"the database now has {fence.service} at epoch {known.epoch}, behind this work's "
            f"epoch {fence.epoch} (a standby promoted without the last change)"
        )
    if not known.owned:
        return f"it no longer owns {fence.service}"
    return None


def holding_off(settings: Settings) -> float | None:
    """Seconds left before this process may start new work after it found the database
    broken (a restart, a failover): a standby promoted without the last writes may have
    forgotten a move, a claim or a run that another node's children still act on, and
    that node's guard stops them within a heartbeat of reading the database again, or at
    its local deadline. So new work waits the longest lease and a heartbeat. None if it
    need not wait."""
    broke = database.broken_at(settings.require_database_url())
    if broke is None:
        return None
    left = broke + timing.surely_gone_after(settings) - time.monotonic()
    return left if left > 0 else None
