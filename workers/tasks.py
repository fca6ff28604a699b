"""The Celery tasks of the cluster; each runs on the node whose queue it was published to.

- `failover.heartbeat`: one heartbeat cycle (fired by the node's own beat).
- `failover.takeover`: the database-locked change of owner that a heartbeat planned.
- `failover.manual_failover`: move a service here, asked by an operator or a draining owner;
  consuming it proves this node is alive and its worker consumes.
- `failover.service_tick`: a fenced, observable unit of each service's work per heartbeat.
- `failover.folder_scan`, `failover.handle_files`: the folder monitor (claim, then handle).
- `failover.script_tick`, `failover.run_script`: the application-script runner.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from workers import app_script, folder_monitor, store
from workers.celery import app
from workers.database import transaction
from workers.decide import Acquire, Dispatch, Handover
from workers.errors import StaleEpoch
from workers.fencing import Fence, record_tick, run_fenced
from workers.heartbeat import run_cycle
from workers.node import current_identity, current_settings
from workers.routing import (
    FOLDER_SCAN,
    HANDLE_FILES,
    HEARTBEAT,
    MANUAL_FAILOVER,
    RUN_SCRIPT,
    SCRIPT_TICK,
    SERVICE_TICK,
    SHARED_QUEUE,
    TAKEOVER,
    node_queue,
    send_to_node,
)
from workers.settings import Settings
from workers.store import Identity

log = logging.getLogger(__name__)


class CeleryTransport:
    """Publishes the heartbeat's decisions on node queues, each with an expiry."""

    def __init__(self, node: str, expires: float) -> None:
        self.node = node
        self.expires = expires

    def enqueue_takeover(self, action: Acquire) -> None:
        args = (action.service, action.from_node, action.epoch, action.reason, action.why)
        send_to_node(app, TAKEOVER, self.node, args, self.expires)

    def dispatch_service(self, action: Dispatch) -> None:
        args = (action.service, action.epoch)
        send_to_node(app, SERVICE_TICK, self.node, args, self.expires)
        settings = current_settings()
        if action.service == folder_monitor.SERVICE and settings.folders():
            send_to_node(app, FOLDER_SCAN, self.node, (action.epoch,), self.expires)
        if action.service == app_script.SERVICE and settings.scripts:
            send_to_node(app, SCRIPT_TICK, self.node, (action.epoch,), self.expires)

    def request_handover(self, action: Handover) -> None:
        args = (action.service, f"node {self.node} (draining)", f"{self.node} is draining")
        send_to_node(app, MANUAL_FAILOVER, action.to, args, self.expires)


@app.task(name=HEARTBEAT, ignore_result=True)
def heartbeat(node: str, incarnation: str) -> str:
    """Renew this node's lease and act on the cluster snapshot; returns the verdict."""
    settings = current_settings()
    me = current_identity()
    if (node, incarnation) != (me.name, me.incarnation):
        log.info("node %s: dropped a heartbeat meant for %s/%s", me.name, node, incarnation)
        return "dropped"
    decision = run_cycle(settings, me, CeleryTransport(me.name, settings.heartbeat_interval))
    log.debug("node %s: %s", me.name, decision.verdict)
    return decision.verdict


@app.task(name=TAKEOVER, ignore_result=True)
def takeover(service: str, from_node: str | None, epoch: int, reason: str, why: str) -> str:
    """Invariant 2: move `service` to this node under the row lock, if the facts still hold."""
    settings = current_settings()
    me = current_identity()
    action = Acquire(service, from_node, epoch, reason, why)
    with transaction(settings) as connection:
        refusal = store.acquire(connection, me, action, f"node {me.name}", settings.policy())
    if refusal:
        log.info("node %s: did not take %s: %s", me.name, service, refusal)
        return f"refused: {refusal}"
    source = f"from {from_node}" if from_node else "unowned"
    log.warning(
        "node %s: took %s (%s) at epoch %d, reason %s: %s",
        me.name,
        service,
        source,
        epoch + 1,
        reason,
        why,
    )
    return f"took {service} at epoch {epoch + 1}"


@app.task(name=MANUAL_FAILOVER, ignore_result=False)
def manual_failover(service: str, actor: str, why: str) -> dict[str, Any]:
    """Move `service` to this node (reason `manual`), under the same lock as a takeover."""
    settings = current_settings()
    me = current_identity()
    with transaction(settings) as connection:
        refusal, epoch = store.move_here(connection, me, service, actor, why)
    if refusal:
        log.warning(
            "node %s: refused to take %s (asked by %s): %s", me.name, service, actor, refusal
        )
    else:
        log.warning(
            "node %s: took %s at epoch %d, reason manual, by %s: %s",
            me.name,
            service,
            epoch,
            actor,
            why,
        )
    return {"service": service, "node": me.name, "epoch": epoch, "refusal": refusal}


@app.task(name=SERVICE_TICK, ignore_result=True)
def service_tick(service: str, epoch: int) -> int | None:
    """A service's due work: here, one fenced tick that tests and operators can observe."""
    settings = current_settings()
    fence = Fence(service, current_identity(), epoch)
    return run_fenced(settings, fence, lambda connection: record_tick(connection, fence))


def _batch_sender(settings: Settings, me: Identity, epoch: int) -> Callable[[str, list[int]], None]:
    """Where handler batches go: the owner's own queue, or the shared processing queue."""
    queue = SHARED_QUEUE if settings.folder_dispatch == "shared" else node_queue(me.name)
    expires = max(60.0, settings.lease_timeout * 20)

    def send(folder: str, ids: list[int]) -> None:
        app.send_task(HANDLE_FILES, args=(folder, ids, epoch), queue=queue, expires=expires)

    return send


@app.task(name=FOLDER_SCAN, ignore_result=True)
def folder_scan(epoch: int) -> dict[str, int]:
    """Scan every hot folder: record arrivals, claim settled files, dispatch handler batches."""
    settings = current_settings()
    me = current_identity()
    fence = Fence(folder_monitor.SERVICE, me, epoch)
    try:
        return folder_monitor.scan(settings, fence, _batch_sender(settings, me, epoch))
    except StaleEpoch as refusal:
        log.warning("node %s: rejected stale work on folder_monitor: %s", me.name, refusal)
        return {}


@app.task(name=HANDLE_FILES, ignore_result=True)
def handle_files(folder: str, ids: list[int], epoch: int) -> int:
    """Run the folder's handler on a batch of claimed files, then ask for more work."""
    settings = current_settings()
    me = current_identity()
    shared = settings.folder_dispatch == "shared"
    fence = Fence(folder_monitor.SERVICE, me, epoch, owner_only=not shared)
    hot_folder = folder_monitor.folder_named(settings, folder)
    handled = folder_monitor.handle_files(settings, hot_folder, ids, fence)
    if not shared:
        with contextlib.suppress(StaleEpoch):
            folder_monitor.dispatch(settings, hot_folder, fence, _batch_sender(settings, me, epoch))
    return handled


@app.task(name=SCRIPT_TICK, ignore_result=True)
def script_tick(epoch: int) -> list[str]:
    """Run the scripts whose scheduled time has come (each slot once)."""
    settings = current_settings()
    return app_script.tick(settings, Fence(app_script.SERVICE, current_identity(), epoch))


@app.task(name=RUN_SCRIPT, ignore_result=False)
def run_script(name: str, epoch: int) -> dict[str, Any]:
    """An on-demand run of an allow-listed script, refused before it starts if stale."""
    settings = current_settings()
    me = current_identity()
    try:
        return app_script.run_now(settings, name, Fence(app_script.SERVICE, me, epoch))
    except StaleEpoch as refusal:
        log.warning("node %s: refused to run %s: %s", me.name, name, refusal)
        return {"run": None, "status": "refused", "exit_code": None, "output_tail": str(refusal)}
