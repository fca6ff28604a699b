"""The Celery tasks of the cluster; each runs on the node whose queue it was published to.

- `failover.heartbeat`: one heartbeat cycle (fired by the node's own beat).
- `failover.takeover`: the database-locked change of owner that a heartbeat planned.
- `failover.service_tick`: a service's due work, fenced by the epoch it was dispatched at.
"""

from __future__ import annotations

import logging

from workers import store
from workers.celery import app
from workers.database import transaction
from workers.decide import Acquire, Dispatch
from workers.fencing import Fence, record_tick, run_fenced
from workers.heartbeat import run_cycle
from workers.node import current_identity, current_settings
from workers.routing import send_to_node

log = logging.getLogger(__name__)


class CeleryTransport:
    """Publishes the heartbeat's decisions on this node's own queue, each with an expiry."""

    def __init__(self, node: str, expires: float) -> None:
        self.node = node
        self.expires = expires

    def enqueue_takeover(self, action: Acquire) -> None:
        args = (action.service, action.from_node, action.epoch, action.reason, action.why)
        send_to_node(app, "failover.takeover", self.node, args, self.expires)

    def dispatch_service(self, action: Dispatch) -> None:
        args = (action.service, action.epoch)
        send_to_node(app, "failover.service_tick", self.node, args, self.expires)


@app.task(name="failover.heartbeat", ignore_result=True)
def heartbeat(node: str, incarnation: str) -> str:
    """Renew this node's lease and act on the cluster snapshot; returns the verdict."""
    settings = current_settings()
    me = current_identity()
    if (node, incarnation) != (me.name, me.incarnation):
        log.info(
            "node %s: dropped a heartbeat of %s/%s (another incarnation)",
            me.name,
            node,
            incarnation,
        )
        return "dropped"
    decision = run_cycle(settings, me, CeleryTransport(me.name, settings.heartbeat_interval))
    log.debug("node %s: %s", me.name, decision.verdict)
    return decision.verdict


@app.task(name="failover.takeover", ignore_result=True)
def takeover(service: str, from_node: str | None, epoch: int, reason: str, why: str) -> str:
    """Invariant 2: move `service` to this node under the row lock, if the facts still hold."""
    settings = current_settings()
    me = current_identity()
    action = Acquire(service, from_node, epoch, reason, why)
    with transaction(settings) as connection:
        refusal = store.acquire(connection, me, action, actor=f"node {me.name}")
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


@app.task(name="failover.service_tick", ignore_result=True)
def service_tick(service: str, epoch: int) -> int | None:
    """A service's due work: here, one fenced tick that tests and operators can observe."""
    settings = current_settings()
    fence = Fence(service, current_identity(), epoch)
    return run_fenced(settings, fence, lambda connection: record_tick(connection, fence))
