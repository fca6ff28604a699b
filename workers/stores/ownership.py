"""Changes of owner, applied under the service row's lock: takeovers, manual and planned
moves, handovers that wait for running work, and releases at a graceful stop.

Every change of owner goes through `acquire` or `release_services`, which lock the
`service_status` row; the table's trigger then raises the epoch check and writes the
history row, so no code path can change an owner silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from workers.decision.decide import Acquire, Policy, grace_ended, refusal_to_acquire
from workers.decision.placement import move_refusal
from workers.decision.snapshot import Node, Snapshot
from workers.settings.process import Identity
from workers.stores.store import NOW, database_now, read_nodes, service_from_row
from workers.stores.tables import server_registry as nodes_t
from workers.stores.tables import service_status as services_t

STALE_INCARNATION = "this process is no longer the node's current incarnation"


def _mine(me: Identity) -> Any:
    return (
        (nodes_t.c.node_name == me.name)
        & (nodes_t.c.incarnation == uuid.UUID(me.incarnation))
        & nodes_t.c.stopped_at.is_(None)
    )


def _lock_service(connection: Connection, service: str) -> tuple[Row[Any], Snapshot]:
    """Lock the service's row, then read every node: the facts a change of owner re-checks."""
    locked = connection.execute(
        select(services_t).where(services_t.c.service_type == service).with_for_update()
    ).one()
    snapshot = Snapshot(
        database_now(connection), read_nodes(connection), (service_from_row(locked._mapping),)
    )
    return locked, snapshot


def _set_owner(
    connection: Connection,
    locked: Row[Any],
    node_id: int | None,
    reason: str,
    actor: str,
    why: str,
    cut: int | None = None,
) -> int:
    """Give the locked service to `node_id` (None: nobody) at the next epoch; return it. `cut`:
    how many runs of a handover this change cuts (the trigger writes it and how long the
    handover waited into the history, and ends the handover)."""
    connection.execute(
        update(services_t)
        .where(services_t.c.id == locked.id)
        .values(
            service_registry_id=node_id,
            epoch=locked.epoch + 1,
            acquired_at=NOW,
            acquired_reason=reason,
            acquired_by=actor,
            acquired_detail=why,
            handover_cut=cut,
        )
    )
    return int(locked.epoch) + 1


def _current_self(snapshot: Snapshot, me: Identity) -> Node | None:
    mine = snapshot.node(me.name)
    return mine if mine is not None and mine.incarnation == me.incarnation else None


InFlight = Callable[[Connection], "list[str] | None"]
"""What of a service still runs, as the database shows it ([]: nothing; None: the database
cannot tell, only the owner knows)."""


@dataclass(frozen=True)
class Grace:
    """What a planned change of owner waits for: at most `seconds` (None: the owner's drain
    grace while it drains, else `default`), for the work `running` finds still running on
    the owner."""

    seconds: float | None
    running: InFlight
    default: float = 0.0


NO_GRACE = Grace(0.0, lambda _connection: [])


@dataclass(frozen=True)
class Handing:
    """A planned change of owner: `moved` at `epoch`, or handing over, with `running` left to
    finish until `until` (database time)."""

    epoch: int
    moved: bool
    running: tuple[str, ...] = ()
    until: datetime | None = None


def _plan(
    connection: Connection,
    locked: Row[Any],
    snapshot: Snapshot,
    to: Node | None,
    change: tuple[str, str, str],
    grace: Grace,
) -> Handing:
    """Move the locked service to `to` now when its owner is gone, no grace is given, nothing
    runs or the grace has ended (cutting what runs); otherwise mark it as handing over, so the
    owner starts nothing new and hands it over once its running work ended."""
    reason, actor, why = change
    service = service_from_row(locked._mapping)
    owner = snapshot.node_by_id(service.owner_id)
    live = owner is not None and owner.is_live(snapshot.now)
    running = grace.running(connection) if live else []
    ended = to is not None and grace_ended(snapshot, to.name, service) is not None
    seconds = grace.seconds
    if seconds is None:
        seconds = drain_grace(snapshot, service.name, grace.default)
    if not live or seconds <= 0 or running == [] or ended:
        cut = None if running is None else len(running)
        epoch = _set_owner(connection, locked, to.id if to else None, reason, actor, why, cut)
        return Handing(epoch, moved=True)
    until = connection.execute(
        update(services_t)
        .where(services_t.c.id == locked.id)
        .values(
            handover_to=to.name if to else None,
            handover_since=func.coalesce(services_t.c.handover_since, NOW),
            handover_until=func.coalesce(
                services_t.c.handover_until, NOW + timedelta(seconds=seconds)
            ),
            handover_reason=reason,
            handover_actor=actor,
            handover_detail=why,
        )
        .returning(services_t.c.handover_until)
    ).scalar_one()
    return Handing(int(locked.epoch), moved=False, running=tuple(running or ()), until=until)


def acquire(
    connection: Connection, me: Identity, action: Acquire, actor: str, policy: Policy
) -> str | None:
    """Invariant 2: lock the service row, re-check, then move it to this node at epoch + 1.

    Returns None when the service was taken, or the reason it was not (another node won,
    the owner came back, this node's own lease lapsed).
    """
    return take(connection, me, action, actor, policy, NO_GRACE)[0]


def take(
    connection: Connection, me: Identity, action: Acquire, actor: str, policy: Policy, grace: Grace
) -> tuple[str | None, Handing | None]:
    """`acquire`, where a failback from a live owner first gives its running work `grace`
    (a planned handover). Returns the refusal, or how the service is changing hands."""
    locked, snapshot = _lock_service(connection, action.service)
    mine = _current_self(snapshot, me)
    if mine is None:
        return STALE_INCARNATION, None
    refusal = refusal_to_acquire(snapshot, me.name, action, policy)
    if refusal:
        return refusal, None
    planned = action.reason == "failback" or locked.handover_since is not None
    change = (action.reason, actor, action.why)
    return None, _plan(connection, locked, snapshot, mine, change, grace if planned else NO_GRACE)


def move_here(
    connection: Connection,
    me: Identity,
    service: str,
    actor: str,
    why: str,
    grace: Grace = NO_GRACE,
) -> tuple[str | None, Handing]:
    """A manual failover, run by the target: take `service` under the lock if it may move
    here, at once or (a live owner with work running) after a planned handover.

    Returns (None, how it is changing hands), or (the reason it was refused, current epoch).
    """
    locked, snapshot = _lock_service(connection, service)
    mine = _current_self(snapshot, me)
    refusal = move_refusal(snapshot, me.name, service) if mine else STALE_INCARNATION
    if refusal or mine is None:
        return refusal, Handing(int(locked.epoch), moved=False)
    return None, _plan(connection, locked, snapshot, mine, ("manual", actor, why), grace)


def drain_grace(snapshot: Snapshot, service: str, default: float) -> float:
    """The grace a move of `service` gives its owner's running work: its owner's drain grace
    while it drains (set by `failover drain --grace/--now`), else `default`."""
    current = snapshot.service(service)
    owner = snapshot.node_by_id(current.owner_id) if current else None
    if owner is not None and owner.draining and owner.drain_grace is not None:
        return owner.drain_grace
    return default


@dataclass(frozen=True)
class Finished:
    """The end of a handover by its owner: moved to `to` at `epoch` (None: released), or
    `cancelled` for that reason (the target can no longer take it)."""

    service: str
    epoch: int
    to: Node | None
    cancelled: str | None = None


def finish_handover(
    connection: Connection, me: Identity, service: str, running: InFlight
) -> Finished | None:
    """On the owner, once its own work for the service ended: hand the service over now.
    None while it is not handing over to a node or `running` still finds work (a graceful
    stop releases its services itself, all at once: `release_services`)."""
    locked, snapshot = _lock_service(connection, service)
    mine = _current_self(snapshot, me)
    current = service_from_row(locked._mapping)
    if mine is None or current.owner_id != mine.id or current.handover_to is None:
        return None
    if running(connection):
        return None
    target = snapshot.node(current.handover_to) if current.handover_to else None
    if current.handover_to is not None:
        refusal = move_refusal(snapshot, current.handover_to, service)
        if refusal or target is None:
            _end_handover(connection, locked)
            return Finished(service, int(locked.epoch), target, refusal or "gone")
    reason = current.handover_reason or "manual"
    actor, why = locked.handover_actor or me.name, locked.handover_detail or reason
    epoch = _set_owner(connection, locked, target.id if target else None, reason, actor, why, 0)
    return Finished(service, epoch, target)


def _end_handover(connection: Connection, locked: Row[Any]) -> None:
    """Give up a handover without a change of owner: the owner carries on."""
    connection.execute(
        update(services_t)
        .where(services_t.c.id == locked.id)
        .values(
            handover_to=None,
            handover_since=None,
            handover_until=None,
            handover_reason=None,
            handover_actor=None,
            handover_detail=None,
        )
    )


def begin_stop(
    connection: Connection, me: Identity, grace: float, running: Callable[[str], InFlight]
) -> dict[str, list[str] | None]:
    """A graceful stop with work running: mark every service this incarnation owns as handing
    over (released at the end), so that it starts nothing new. Returns what runs, per service;
    nothing is marked when nothing runs (the stop then releases at once)."""
    owned = _owned(connection, me)
    if not owned or grace <= 0:
        return {}
    found = {service: running(service)(connection) for service in owned}
    if all(left == [] for left in found.values()):
        return {}
    for service in owned:
        locked, snapshot = _lock_service(connection, service)
        change = ("release", me.name, "graceful stop")
        _plan(connection, locked, snapshot, None, change, Grace(grace, lambda _c: None))
    return found


def _owned(connection: Connection, me: Identity) -> list[str]:
    """The services this incarnation owns, by name."""
    rows = connection.execute(
        select(services_t.c.service_type)
        .join(nodes_t, nodes_t.c.id == services_t.c.service_registry_id)
        .where(_mine(me))
        .order_by(services_t.c.service_type)
    ).scalars()
    return list(rows.all())


def release_services(
    connection: Connection,
    me: Identity,
    why: str = "graceful stop",
    running: Callable[[str], InFlight] | None = None,
) -> list[tuple[str, int]]:
    """Invariant 7: stop this incarnation and hand back its services (reason `release`).

    Returns each released service with its new epoch. The node is marked stopped first,
    so a heartbeat still running in this process can no longer renew or claim anything.
    With `running`, the history counts, per service, the runs the release cuts.
    """
    owned = _owned(connection, me)
    node_id = connection.execute(
        update(nodes_t)
        .where(_mine(me))
        .values(stopped_at=NOW, is_active=False, last_verdict=f"stopped: {why}")
        .returning(nodes_t.c.id)
    ).scalar()
    if node_id is None:
        return []
    released = []
    for service in owned:
        locked, _snapshot = _lock_service(connection, service)
        left = running(service)(connection) if running else None
        cut = None if left is None else len(left)
        epoch = _set_owner(connection, locked, None, "release", me.name, why, cut)
        released.append((service, epoch))
    return released
