"""One heartbeat of a node, as a sequence of short named phases.

1. check the node's own application over HTTP (when an address is registered);
2. in one statement (one round trip): renew the lease from the database clock (only while
   the application is healthy), store the node's measured latencies, read the snapshot;
3. `decide` on the snapshot (pure);
4. apply: mark dead peers inactive and store a changed verdict (one more round trip, only
   then), enqueue takeover tasks, send the owned services' work as one message; log each
   decision as one line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Protocol

import requests

from workers.decision.decide import (
    Acquire,
    Decision,
    Dispatch,
    Handover,
    MarkInactive,
    Wait,
    decide,
)
from workers.decision.snapshot import Snapshot
from workers.fence import db_clock, local_fence, local_state
from workers.settings import Settings, timing
from workers.settings.process import Identity
from workers.stores import store

log = logging.getLogger(__name__)
_http = requests.Session()


class Transport(Protocol):
    """How the heartbeat hands work to Celery: the tasks module provides the real one."""

    def enqueue_takeover(self, action: Acquire) -> None: ...

    def dispatch_services(self, actions: list[Dispatch]) -> None: ...

    def request_handover(self, action: Handover) -> None: ...


def health_url(settings: Settings) -> str | None:
    """The node's own application, `http://ip_address:port_number/app_context`, if registered."""
    if not (settings.ip_address and settings.port_number):
        return None
    context = (settings.app_context or "").lstrip("/")
    return f"http://{settings.ip_address}:{settings.port_number}/{context}"


def application_problem(settings: Settings) -> str | None:
    """Why the node's own application is unhealthy, or None when it is (or none is registered)."""
    url = health_url(settings)
    if url is None:
        return None
    try:
        response = _http.get(url, timeout=settings.health_timeout, allow_redirects=False)
    except requests.RequestException as error:
        return f"application check failed: {url}: {type(error).__name__}"
    if response.status_code >= 400:
        return f"application check failed: {url} answered {response.status_code}"
    return None


@dataclass(frozen=True)
class Beat:
    """What the beat knows of the heartbeat it sent: its scheduled tick (Unix time on this
    host), how long the previous publish to the broker took (one round trip), and the
    broker server it reached (`host:port`), and whether over TLS."""

    tick: float | None = None
    broker_round_trip_ms: float | None = None
    broker_server: str | None = None
    broker_encrypted: bool | None = None


def run_cycle(settings: Settings, me: Identity, transport: Transport, beat: Beat) -> Decision:
    """Run one heartbeat and return what it decided: one database round trip when nothing
    changes, two when it marks a dead peer or its verdict changes."""
    problem = application_problem(settings)
    latency = store.Latency(
        local_state.recall(me.incarnation, "db_round_trip_ms"),
        beat.broker_round_trip_ms,
        local_state.recall(me.incarnation, "heartbeat_cycle_ms"),
    )
    sent = time.monotonic()
    snapshot = store.heartbeat(
        settings, me, problem is None, latency, beat.broker_server, beat.broker_encrypted
    )
    _measure(settings, me, (time.monotonic() - sent) * 1000, beat)
    if snapshot is None:
        return Decision((), "this incarnation is stopped or replaced")
    db_clock.sample(me.incarnation, snapshot.now, sent, time.monotonic())
    if problem is None:
        local_fence.renewed(
            me.incarnation,
            sent,
            settings.node_lease_timeout(),
            settings.heartbeat_interval,
            settings.fence_margin,
        )
    notice_lost_changes(me, snapshot)
    handing = frozenset(service.name for service in snapshot.services if service.handing_over)
    local_fence.observed(me.incarnation, _epochs(snapshot), _mine(snapshot, me), sent, handing)
    decision = decide(snapshot, me.name, settings.policy())
    if problem:
        log.warning("not renewing its lease: %s", problem)
        decision = replace(decision, verdict=f"not renewing: {problem}; {decision.verdict}")
    _apply(settings, me, snapshot, decision, transport)
    return decision


def notice_lost_changes(me: Identity, snapshot: Snapshot) -> None:
    """Say once when the database is behind what this node saw: a service at a lower epoch
    than an earlier beat read (a standby promoted without the primary's last commits). The
    database stays the truth: the node decides, and its fence checks, on what it says now."""
    for service in snapshot.services:
        known = local_fence.held(me.incarnation, service.name)
        seen = known.epoch if known is not None else None
        if seen is not None and service.epoch < seen:
            log.warning(
                "the database is behind what this node saw: %s is at epoch %d, an "
                "earlier heartbeat read epoch %d; it lost committed changes (a failover to a "
                "standby that had not received them); going on from what it says now",
                service.name,
                service.epoch,
                seen,
            )


def _epochs(snapshot: Snapshot) -> dict[str, int]:
    return {service.name: service.epoch for service in snapshot.services}


def _mine(snapshot: Snapshot, me: Identity) -> set[str]:
    """The services this incarnation owns in the snapshot."""
    node = snapshot.node(me.name)
    if node is None or node.incarnation != me.incarnation:
        return set()
    return {service.name for service in snapshot.services if service.owner_id == node.id}


def _measure(settings: Settings, me: Identity, db_ms: float, beat: Beat) -> None:
    """Keep the round trip and the cycle (tick to renewal) for the next beat to store, and
    warn once when the cycle eats more than a third of the lease."""
    local_state.remember(me.incarnation, "db_round_trip_ms", db_ms)
    if beat.tick is None:
        return
    cycle_ms = max(0.0, (time.time() - beat.tick) * 1000)
    previous = local_state.recall(me.incarnation, "heartbeat_cycle_ms") or 0.0
    local_state.remember(me.incarnation, "heartbeat_cycle_ms", cycle_ms)
    limit_ms = timing.slow_cycle_ms(settings)
    if cycle_ms > limit_ms >= previous:
        log.warning(
            "heartbeat cycle %.0f ms (database round trip %.0f ms) is over a third "
            "of its %g s lease: raise FAILOVER_REGION_LEASE_TIMEOUT for region %s (see the "
            "README, far regions)",
            cycle_ms,
            db_ms,
            settings.node_lease_timeout(),
            settings.region,
        )


def _apply(
    settings: Settings, me: Identity, snapshot: Snapshot, decision: Decision, transport: Transport
) -> None:
    marks = [action for action in decision.actions if isinstance(action, MarkInactive)]
    mine = snapshot.node(me.name)
    if marks or (mine is not None and mine.last_verdict != decision.verdict):
        marked = set(store.apply_marks_and_verdict(settings, me, marks, decision.verdict))
        for mark in marks:
            if mark.node in marked:
                log.warning("%s", mark.describe())
    for action in decision.actions:
        if isinstance(action, Acquire):
            log.info("%s", action.describe())
            transport.enqueue_takeover(action)
        elif isinstance(action, Handover):
            log.info("%s", action.describe())
            transport.request_handover(action)
        elif isinstance(action, Wait):
            log.info("%s", action.describe())
    dispatches = [action for action in decision.actions if isinstance(action, Dispatch)]
    if dispatches:
        transport.dispatch_services(dispatches)
