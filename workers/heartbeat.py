"""One heartbeat of a node, as a sequence of short named phases.

1. check the node's own application over HTTP (when an address is registered);
2. renew the lease from the database clock (only while the application is healthy);
3. read one snapshot and `decide` on it (pure);
4. apply: mark dead peers inactive, enqueue takeover tasks, dispatch owned services' work;
5. store the verdict and log each decision as one line.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

import requests

from workers import store
from workers.database import transaction
from workers.decide import Acquire, Decision, Dispatch, Handover, MarkInactive, Wait, decide
from workers.settings import Settings
from workers.store import Identity

log = logging.getLogger(__name__)
_http = requests.Session()


class Transport(Protocol):
    """How the heartbeat hands work to Celery: the tasks module provides the real one."""

    def enqueue_takeover(self, action: Acquire) -> None: ...

    def dispatch_service(self, action: Dispatch) -> None: ...

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


def run_cycle(settings: Settings, me: Identity, transport: Transport) -> Decision:
    """Run one heartbeat and return what it decided."""
    problem = application_problem(settings)
    with transaction(settings) as connection:
        if problem:
            store.record_unhealthy(connection, me)
        elif not store.renew_lease(connection, me):
            return Decision((), "this incarnation is stopped or replaced")
        snapshot = store.read_snapshot(connection)
    decision = decide(snapshot, me.name, settings.policy())
    if problem:
        log.warning("node %s: not renewing its lease: %s", me.name, problem)
        decision = replace(decision, verdict=f"not renewing: {problem}; {decision.verdict}")
    _apply(settings, me, decision, transport)
    return decision


def _apply(settings: Settings, me: Identity, decision: Decision, transport: Transport) -> None:
    with transaction(settings) as connection:
        for action in decision.actions:
            if isinstance(action, MarkInactive) and store.mark_inactive(connection, action):
                log.warning("node %s: %s", me.name, action.describe())
        store.record_verdict(connection, me, decision.verdict)
    for action in decision.actions:
        if isinstance(action, Acquire):
            log.info("node %s: %s", me.name, action.describe())
            transport.enqueue_takeover(action)
        elif isinstance(action, Dispatch):
            transport.dispatch_service(action)
        elif isinstance(action, Handover):
            log.info("node %s: %s", me.name, action.describe())
            transport.request_handover(action)
        elif isinstance(action, Wait):
            log.info("node %s: %s", me.name, action.describe())
