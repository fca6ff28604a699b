"""Operator requests: manual failover, drain and undrain, and reading the history.

The CLI records a request and a node carries it out (as `patronictl` does): a move is a
`failover.manual_failover` task on the target's queue, so only a live, consuming target can
perform it, under the same row lock as an automatic takeover. Every refusal is decided
before anything is written, so a refused command leaves the database as it was.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from workers import services
from workers.decision.placement import best_candidate, move_refusal
from workers.decision.snapshot import Snapshot
from workers.errors import ConfigError, Refused
from workers.queues.routing import MANUAL_FAILOVER, RUN_SCRIPT, send_to_node
from workers.settings import Settings, require_service
from workers.stores import registration, store
from workers.stores.broker import check_broker
from workers.stores.database import transaction
from workers.stores.tables import ownership_history as history_t


@dataclass(frozen=True)
class MoveOutcome:
    """A move done: the new owner and epoch, and for a planned handover how long it waited
    for the old owner's running work and how many runs it cut (None: not known)."""

    service: str
    node: str
    epoch: int
    waited: float | None = None
    cut: int | None = None

    def describe(self) -> str:
        done = f"moved {self.service} to {self.node} at epoch {self.epoch}"
        if self.waited is not None:
            done += f" after waiting {self.waited:.1f} s for its running work"
        if self.cut:
            return f"{done}; {self.cut} run(s) still going were cut"
        return done + ("; nothing was cut" if self.waited is not None else "")


def operator() -> str:
    """Who is asking: user@host, recorded as the actor of a manual change."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def require_node(snapshot: Snapshot, node: str) -> None:
    if snapshot.node(node) is None:
        known = ", ".join(n.name for n in snapshot.nodes) or "none registered"
        raise ConfigError(f"unknown node {node!r} (known: {known})")


def choose_target(settings: Settings, snapshot: Snapshot, service: str, to: str | None) -> str:
    """The node a move goes to: the one asked for if it may receive it, else the best one."""
    if to is not None:
        require_node(snapshot, to)
        refusal = move_refusal(snapshot, to, service)
        if refusal:
            raise Refused(f"cannot move {service} to {to}: {refusal}")
        return to
    best = best_candidate(snapshot, service, settings.policy().placement(service))
    if best is None:
        raise Refused(f"cannot move {service}: no other live node can take it")
    return best.name


def move(
    settings: Settings,
    app: Any,
    service: str,
    to: str | None,
    why: str,
    timeout: float,
    grace: float | None = None,
    report: Callable[[str], None] = lambda _line: None,
) -> MoveOutcome:
    """Ask the target to take the service and wait for the outcome; raise `Refused` if not.

    A live owner with work running first lets it finish, for at most `grace` seconds (None:
    the target's setting; 0: cut it now): `report` gets a line whenever what runs changes.
    """
    with transaction(settings) as connection:
        snapshot = store.read_snapshot(connection)
    require_service(service, (s.name for s in snapshot.services))
    target = choose_target(settings, snapshot, service, to)
    before = snapshot.service(service)
    args = (service, operator(), why, grace)
    deadline = snapshot.now.timestamp() + timeout
    check_broker(app, settings, wait=False)
    result = send_to_node(app, MANUAL_FAILOVER, target, args, deadline=deadline)
    try:
        outcome = result.get(timeout=timeout + 1.0, disable_sync_subtasks=False)
    except Exception:
        outcome = None
    finally:
        result.forget()
    if outcome is None:
        return _settle_unanswered(settings, service, target, before.epoch if before else 0, timeout)
    if outcome["refusal"]:
        raise Refused(f"{target} refused {service}: {outcome['refusal']}")
    if outcome.get("moved", True):
        return _handed(settings, service, target, outcome["epoch"])
    return watch_handover(settings, service, target, outcome["epoch"], report)


def _settle_unanswered(
    settings: Settings, service: str, target: str, epoch: int, timeout: float
) -> MoveOutcome:
    """No answer in time: the database says whether the move happened after all."""
    with transaction(settings) as connection:
        snapshot = store.read_snapshot(connection)
    current = snapshot.service(service)
    owner = snapshot.node_by_id(current.owner_id) if current else None
    if current and owner and owner.name == target and current.epoch > epoch:
        return MoveOutcome(service, target, current.epoch)
    raise Refused(
        f"{target} did not take {service} within {timeout:g} s "
        "(the request expires unused; nothing changed)"
    )


def _handed(settings: Settings, service: str, target: str, epoch: int) -> MoveOutcome:
    """What the history says of the change of owner at `epoch`: the move to `target` (how
    long it waited, what it cut), or `Refused` if the service went elsewhere."""
    with transaction(settings) as connection:
        row = connection.execute(
            select(
                history_t.c.to_node, history_t.c.handover_waited_s, history_t.c.handover_cut
            ).where((history_t.c.service_type == service) & (history_t.c.epoch == epoch))
        ).first()
    if row is not None and row.to_node != target:
        raise Refused(f"{service} went to {row.to_node or 'nobody'} at epoch {epoch}, not {target}")
    waited, cut = (row.handover_waited_s, row.handover_cut) if row else (None, None)
    return MoveOutcome(service, target, epoch, waited, cut)


def watch_handover(
    settings: Settings, service: str, target: str, epoch: int, report: Callable[[str], None]
) -> MoveOutcome:
    """Follow a handover until the service is the target's (or the handover was given up),
    reporting what still runs on the old owner and the grace left."""
    said = None
    while True:
        with transaction(settings) as connection:
            snapshot = store.read_snapshot(connection)
            current = snapshot.service(service)
            running = services.running_work(settings, service)(connection)
        assert current is not None
        owner = snapshot.node_by_id(current.owner_id)
        if current.epoch > epoch:
            return _handed(settings, service, target, epoch + 1)
        if not current.handing_over:
            raise Refused(f"{owner.name if owner else 'its owner'} gave up handing {service} over")
        line = _handover_line(service, owner.name if owner else "?", running)
        if line != said:
            said = line
            report(f"{line} ({current.grace_left(snapshot.now):.0f} s of grace left)")
        time.sleep(0.2)


def _handover_line(service: str, owner: str, running: list[str] | None) -> str:
    if running is None:
        return f"{service}: waiting for {owner} to say its running work ended"
    shown = ", ".join(running[:3]) + (", ..." if len(running) > 3 else "")
    return f"{service}: waiting for {len(running)} running on {owner}: {shown}"


def drain(settings: Settings, node: str, force: bool, grace: float | None = None) -> list[str]:
    """Mark `node` draining (its heartbeat then hands each service to the best candidate,
    after letting its running work finish for at most `grace` seconds; None: the setting).

    Returns the services nothing can take yet. Refused, with nothing written, when the node
    is the last that can run one of its services, unless `force`.
    """
    with transaction(settings) as connection:
        snapshot = store.read_snapshot(connection)
        require_node(snapshot, node)
        stuck = _services_without_successor(settings, snapshot, node)
        if stuck and not force:
            raise Refused(
                f"{node} is the last live node that can run {', '.join(stuck)}: "
                "use --force to drain it anyway (it keeps serving until another node can)"
            )
        registration.set_draining(connection, node, True, grace)
    return stuck


def _services_without_successor(settings: Settings, snapshot: Snapshot, node: str) -> list[str]:
    me = snapshot.node(node)
    owned = [s for s in snapshot.services if me is not None and s.owner_id == me.id]
    policy = settings.policy()
    return [
        s.name
        for s in owned
        if best_candidate(snapshot, s.name, policy.placement(s.name), {node}) is None
    ]


def undrain(settings: Settings, node: str) -> None:
    with transaction(settings) as connection:
        require_node(store.read_snapshot(connection), node)
        registration.set_draining(connection, node, False)


def watch_drain(
    settings: Settings, node: str, timeout: float, report: Callable[[str], None]
) -> list[str]:
    """Report each service leaving `node` until it owns none; return those it still owns."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    handing: dict[str, str | None] = {}
    while True:
        with transaction(settings) as connection:
            snapshot = store.read_snapshot(connection)
        me = snapshot.node(node)
        for service in snapshot.services:
            owner = snapshot.node_by_id(service.owner_id)
            if me and owner and owner.id != me.id and seen.get(service.name) != service.epoch:
                report(f"{service.name}: {owner.name} at epoch {service.epoch}")
            elif (
                me
                and owner
                and owner.id == me.id
                and service.handing_over
                and handing.get(service.name) != service.handover_to
            ):
                handing[service.name] = service.handover_to
                report(
                    f"{service.name}: handing over to {service.handover_to} once its running "
                    f"work ends (at most {service.grace_left(snapshot.now):.0f} s)"
                )
            seen[service.name] = service.epoch
        left = [s.name for s in snapshot.services if me is not None and s.owner_id == me.id]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def run_script_now(
    settings: Settings, app: Any, name: str, wait: bool, timeout: float
) -> dict[str, Any]:
    """Queue an on-demand run on the live owner of app_script; with `wait`, its outcome."""
    script = settings.script(name)
    with transaction(settings) as connection:
        snapshot = store.read_snapshot(connection)
    service = snapshot.service("app_script")
    owner = snapshot.node_by_id(service.owner_id) if service else None
    if service is None or owner is None:
        raise Refused("no node owns app_script now: is any node running?")
    if not owner.is_live(snapshot.now):
        raise Refused(f"the owner of app_script, {owner.name}, is not live (no fresh lease)")
    deadline = snapshot.now.timestamp() + timeout
    check_broker(app, settings, wait=False)
    result = send_to_node(app, RUN_SCRIPT, owner.name, (name, service.epoch), deadline=deadline)
    queued = {"node": owner.name, "epoch": service.epoch}
    if not wait:
        result.forget()
        return queued
    try:
        outcome = result.get(timeout=timeout + script.timeout, disable_sync_subtasks=False)
    except Exception:
        raise Refused(f"{owner.name} did not run {name} in time (the request expires)") from None
    if outcome["status"] == "refused":
        raise Refused(f"{owner.name} refused to run {name}: {outcome['output_tail']}")
    return {**queued, **outcome}
