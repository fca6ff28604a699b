"""The Celery tasks of the cluster; each runs on the node whose queue it was published to.

- `failover.heartbeat`: one heartbeat cycle (fired by the node's own beat).
- `failover.takeover`: the database-locked change of owner that a heartbeat planned.
- `failover.manual_failover`: move a service here, asked by an operator or a draining owner;
  consuming it proves this node is alive and its worker consumes.
- `failover.service_work`: the work of every service this node owns, one message per beat:
  a fenced, observable tick of each, then each one's work through `workers.services` (the
  folder monitor's scan dispatches `failover.handle_files` batches, the script runner's due
  runs `failover.taken_run` in a thread of the worker (no message: its slot was taken under
  the fence a moment before), a custom service's turn `failover.custom_run`;
  `failover.scheduled_run` runs one sent by a node of the previous release);
  `failover.run_script` runs a script on demand.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from workers import services
from workers.decision.decide import Acquire, Dispatch, Handover
from workers.errors import HandingOver, StaleEpoch
from workers.fence import db_clock, local_fence, local_state
from workers.fence.fencing import Fence, record_ticks_with, reject
from workers.queues import backlog
from workers.queues.routing import (
    CUSTOM_RUN,
    HANDLE_FILES,
    HEARTBEAT,
    MANUAL_FAILOVER,
    RUN_SCRIPT,
    SCHEDULED_RUN,
    SERVICE_WORK,
    TAKEN_RUN,
    TAKEOVER,
    expired,
    node_queue,
    send_to_node,
    send_to_queue,
)
from workers.runtime.app import app
from workers.runtime.heartbeat import Beat, run_cycle
from workers.runtime.node import beat_stopped, stopping
from workers.services import app_script, folder_monitor
from workers.services.custom import CustomService
from workers.settings import Settings, timing
from workers.settings.process import Identity, current_identity, current_settings
from workers.stores import database, ownership
from workers.stores.database import transaction

log = logging.getLogger(__name__)


class CeleryTransport:
    """Publishes the heartbeat's decisions on node queues, each with an expiry."""

    def __init__(self, node: str, expires: float) -> None:
        self.node = node
        self.expires = expires

    def enqueue_takeover(self, action: Acquire) -> None:
        if stopping(current_identity().incarnation):
            return
        args = (action.service, action.from_node, action.epoch, action.reason, action.why)
        send_to_node(app, TAKEOVER, self.node, args, self.expires)

    def dispatch_services(self, actions: list[Dispatch]) -> None:
        """One message for all the services this node owns, unless one is still waiting."""
        me = current_identity()
        max_age = timing.waiting_max_age(self.expires)
        if backlog.may_send(app, me.incarnation, SERVICE_WORK, node_queue(self.node), max_age):
            owned = [(action.service, action.epoch) for action in actions]
            send_to_node(app, SERVICE_WORK, self.node, (owned,), self.expires)

    def request_handover(self, action: Handover) -> None:
        args = (action.service, f"node {self.node} (draining)", f"{self.node} is draining")
        now = db_clock.database_time(current_settings(), current_identity().incarnation)
        send_to_node(app, MANUAL_FAILOVER, action.to, args, deadline=now + self.expires)


@app.task(name=HEARTBEAT, ignore_result=True)
def heartbeat(
    node: str,
    incarnation: str,
    tick: float | None = None,
    broker_round_trip_ms: float | None = None,
    broker_server: str | None = None,
    broker_encrypted: bool | None = None,
) -> str:
    """Renew this node's lease and act on the cluster snapshot; returns the verdict.

    The other arguments come from the node's own beat (same host): the scheduled time of
    this beat, how long its previous publish took, where it went, and whether over TLS.
    """
    settings = current_settings()
    me = current_identity()
    if (node, incarnation) != (me.name, me.incarnation):
        log.info("dropped a heartbeat meant for %s/%s", node, incarnation)
        return "dropped"
    if expired(settings, me):
        return "expired"
    if beat_stopped(me.incarnation):
        return "dropped: the beat stopped"
    transport = CeleryTransport(me.name, settings.heartbeat_interval)
    beat = Beat(tick, broker_round_trip_ms, broker_server, broker_encrypted)
    decision = run_cycle(settings, me, transport, beat)
    log.debug("%s", decision.verdict)
    return decision.verdict


@app.task(name=TAKEOVER, ignore_result=True)
def takeover(service: str, from_node: str | None, epoch: int, reason: str, why: str) -> str:
    """Invariant 2: move `service` to this node under the row lock, if the facts still hold."""
    settings = current_settings()
    me = current_identity()
    if beat_stopped(me.incarnation):
        log.info("did not take %s: its beat stopped", service)
        return "refused: its beat stopped"
    action = Acquire(service, from_node, epoch, reason, why)
    grace = ownership.Grace(settings.handover_grace, services.running_work(settings, service))
    with transaction(settings) as connection:
        refusal, handing = ownership.take(
            connection, me, action, f"node {me.name}", settings.policy(), grace
        )
    if refusal or handing is None:
        log.info("did not take %s: %s", service, refusal)
        return f"refused: {refusal}"
    if not handing.moved:
        _log_handing(service, from_node, handing)
        return f"{service} handing over from {from_node}"
    local_fence.acquired(me.incarnation, service, epoch + 1)
    source = f"from {from_node}" if from_node else "unowned"
    log.warning(
        "took %s (%s) at epoch %d, reason %s: %s",
        service,
        source,
        epoch + 1,
        reason,
        why,
    )
    return f"took {service} at epoch {epoch + 1}"


@app.task(name=MANUAL_FAILOVER, ignore_result=False)
def manual_failover(
    service: str, actor: str, why: str, grace: float | None = None
) -> dict[str, Any]:
    """Move `service` to this node (reason `manual`), under the same lock as a takeover.

    A live owner with work running first gets `grace` seconds (None: its drain's grace or
    the setting) to let it finish: the answer then says the service is handing over."""
    settings = current_settings()
    me = current_identity()
    answer: dict[str, Any] = {"service": service, "node": me.name, "epoch": None}
    refusal = _unfit_to_take(settings, me)
    if refusal:
        log.info("refused to take %s (asked by %s): %s", service, actor, refusal)
        return {**answer, "refusal": refusal, "moved": False}
    planned = ownership.Grace(
        grace, services.running_work(settings, service), settings.handover_grace
    )
    with transaction(settings) as connection:
        refusal, handing = ownership.move_here(connection, me, service, actor, why, planned)
    answer |= {"epoch": handing.epoch, "refusal": refusal, "moved": handing.moved}
    if refusal:
        log.info("refused to take %s (asked by %s): %s", service, actor, refusal)
    elif not handing.moved:
        _log_handing(service, None, handing)
        answer |= {
            "running": list(handing.running),
            "until": handing.until.isoformat() if handing.until else None,
        }
    else:
        local_fence.acquired(me.incarnation, service, handing.epoch)
        log.info(
            "took %s at epoch %d, reason manual, by %s: %s",
            service,
            handing.epoch,
            actor,
            why,
        )
    return answer


def _unfit_to_take(settings: Settings, me: Identity) -> str | None:
    """Why this node may not take a service on now, or None."""
    if expired(settings, me):
        return "expired unused"
    if beat_stopped(me.incarnation):
        return "its beat stopped: the node is exiting to be restarted"
    if stopping(me.incarnation):
        return "the node is stopping"
    return None


def _log_handing(service: str, owner: str | None, handing: ownership.Handing) -> None:
    """Say that a service hands over to this node once its owner's running work ended."""
    running = ", ".join(handing.running[:5]) or "its running work"
    more = f" and {len(handing.running) - 5} more" if len(handing.running) > 5 else ""
    log.info(
        "%s hands over to it from %s once %s%s ended (grace until %s)",
        service,
        owner or "its owner",
        running,
        more,
        handing.until.isoformat(timespec="seconds") if handing.until else "?",
    )


def hand_over_when_idle(settings: Settings, fence: Fence) -> str:
    """On an owner whose service is handing over: once nothing of it runs any more, move it
    to its new owner now (and wake that node to start at once)."""
    me = fence.me
    running = services.running_here(settings, me.incarnation, fence.service)
    with transaction(settings) as connection:
        finished = ownership.finish_handover(connection, me, fence.service, running)
    if finished is None:
        return "handing over: its running work goes on"
    if finished.cancelled:
        log.warning(
            "gave up handing %s over: %s; it carries on as its owner",
            fence.service,
            finished.cancelled,
        )
        return f"handover cancelled: {finished.cancelled}"
    local_fence.released(me.incarnation, {fence.service: finished.epoch})
    to = finished.to
    log.info(
        "handed %s over to %s at epoch %d: its running work had ended",
        fence.service,
        to.name if to else "nobody",
        finished.epoch,
    )
    if to is not None:
        now = db_clock.database_time(settings, me.incarnation)
        deadline = now + timing.nudge_deadline(settings)
        send_to_node(app, HEARTBEAT, to.name, (to.name, to.incarnation), deadline=deadline)
    return f"handed over at epoch {finished.epoch}"


@app.task(name=SERVICE_WORK, ignore_result=True)
def service_work(owned: list[tuple[str, int]]) -> dict[str, Any]:
    """The due work of each service this node owns at the given epoch, each fenced.

    One statement fences and ticks them all; then each service does its own work, if it
    has any (the built-ins do), each side effect again under its fence. One runs at a time
    on a node: a slow one (a far owner's) is not joined by the next, which waits up to half
    a heartbeat interval for it before giving its turn up.
    """
    settings = current_settings()
    me = current_identity()
    wait = timing.turn_wait(settings)
    with local_state.alone(me.incarnation, SERVICE_WORK, wait) as alone:
        if not alone:
            log.debug("service work skipped: the previous one still runs")
            return {}
        return _service_work(settings, me, [(service, int(epoch)) for service, epoch in owned])


_reported_hold: list[float | None] = [None]


def _service_work(settings: Settings, me: Identity, pairs: list[tuple[str, int]]) -> dict[str, Any]:
    left = local_fence.holding_off(settings)
    if left:
        _report_hold(settings, left)
        return {}
    reads = services.tick_reads(settings, [service for service, _ in pairs])
    refusals, found = record_ticks_with(settings, me, pairs, [read for _, read in reads])
    for (reader, _), rows in zip(reads, found, strict=True):
        reader.read_at_tick(me.incarnation, rows)
    done: dict[str, Any] = {}
    for service, epoch in pairs:
        fence = Fence(service, me, epoch, starting=True)
        try:
            refusal = refusals.get(service, StaleEpoch(f"unknown service {service}"))
            if refusal is not None:
                raise refusal
            done[service] = _own_work(settings, fence)
        except HandingOver:
            done[service] = hand_over_when_idle(settings, fence)
        except StaleEpoch as stale:
            reject(settings, fence, stale)
    return done


def _report_hold(settings: Settings, left: float) -> None:
    """Say once per break that the service work waits, and why."""
    broke = database.broken_at(settings.require_database_url())
    if _reported_hold[0] != broke:
        _reported_hold[0] = broke
        log.warning(
            "its database connection broke: no new service work for %.1f s (a "
            "promoted standby may have lost the last writes; other nodes' guards need a "
            "heartbeat to see what it says now)",
            left,
        )


class CelerySender:
    """How a service's work sends tasks: to this node's own queue, limited by this host's
    clock, or to another queue (the shared one), limited by a deadline on the database's."""

    def __init__(self, settings: Settings, me: Identity) -> None:
        self.settings = settings
        self.me = me
        self.node = me.name

    def to_node(self, task: str, args: tuple[Any, ...], expires: float) -> None:
        send_to_node(app, task, self.node, args, expires)

    def to_queue(self, task: str, args: tuple[Any, ...], queue: str, expires: float) -> None:
        if queue == node_queue(self.node):
            send_to_queue(app, task, queue, args, expires)
            return
        deadline = db_clock.database_time(self.settings, self.me.incarnation) + expires
        send_to_queue(app, task, queue, args, deadline=deadline)

    def here(self, task: str, args: tuple[Any, ...]) -> None:
        """Run `task` in a thread of this process, now: the service work has just checked
        its fence (a script's slot taken under it) and returns at once."""
        threading.Thread(target=app.tasks[task].run, args=args, name=task, daemon=True).start()


def _own_work(settings: Settings, fence: Fence) -> Any:
    """What the service does at each beat beyond its tick, through the service registry."""
    return services.run_work(settings, fence, CelerySender(settings, fence.me))


@app.task(name=HANDLE_FILES, ignore_result=True)
def handle_files(folder: str, ids: list[int], epoch: int) -> int:
    """Run the folder's handler on a batch of claimed files, then ask for more work."""
    settings = current_settings()
    me = current_identity()
    send = CelerySender(settings, me)
    return folder_monitor.handle_batch(settings, me, folder, ids, epoch, send, hand_over_when_idle)


@app.task(name=SCHEDULED_RUN, ignore_result=True)
def scheduled_run(name: str, run_id: int, epoch: int) -> str:
    """Execute a scheduled run whose start the service work recorded under the fence."""
    settings = current_settings()
    me = current_identity()
    return app_script.scheduled_run(settings, me, name, run_id, epoch, hand_over_when_idle)


@app.task(name=TAKEN_RUN, ignore_result=True)
def taken_run(name: str, run_id: int, epoch: int) -> str:
    """Execute a run that the service work recorded as started under the fence a moment ago
    (`CelerySender.here`): no second check before it starts, no message."""
    settings = current_settings()
    me = current_identity()
    return app_script.taken_run(settings, me, name, run_id, epoch, hand_over_when_idle)


def _after_run(settings: Settings, fence: Fence) -> None:
    """A run ended: if the service is handing over, hand it over if that was the last one."""
    if local_fence.handing_over(fence.me.incarnation, fence.service):
        hand_over_when_idle(settings, fence)


@app.task(name=RUN_SCRIPT, ignore_result=False)
def run_script(name: str, epoch: int) -> dict[str, Any]:
    """An on-demand run of an allow-listed script, refused before it starts if stale."""
    settings = current_settings()
    me = current_identity()
    return app_script.run_on_demand(settings, me, name, epoch, hand_over_when_idle)


@app.task(name=CUSTOM_RUN, ignore_result=True)
def custom_run(service: str, epoch: int) -> str:
    """One run of a custom service's handler, in a child process cut at its timeout, beside
    the service work (a hung handler holds neither it nor the other services)."""
    settings = current_settings()
    me = current_identity()
    if expired(settings, me):
        return "expired"
    custom = services.services_for(settings).get(service)
    if not isinstance(custom, CustomService):
        return "not a custom service here"
    fence = Fence(service, me, epoch)
    ending = custom.run(settings, fence)
    _after_run(settings, fence)
    return ending
