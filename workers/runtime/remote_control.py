"""Remote control a node obeys, and the one switch it refuses while its settings say no.

Flower (by default, every 5 s) and `celery control enable_events` broadcast
`enable_events`, and Celery's own command turns task events on in every worker that
receives it. Each task event is one more publish per task state, a round trip a far node
pays in full (see the README, Far regions), and a node sends several tasks a second. So
whether a node sends task events is the node's own setting (`FAILOVER_TASK_EVENTS`,
Celery's `worker_send_task_events`): while it is off, the node answers `enable_events`
with a refusal that says why, logs that once, and keeps its task events off. With the
setting on, Celery's command runs as before. Every other remote control command
(`ping`, `inspect`, `shutdown`, `disable_events`, the worker heartbeats Flower lists the
workers from) is Celery's own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.worker import control

log = logging.getLogger(__name__)

REFUSAL = (
    "task events stay off on this node (FAILOVER_TASK_EVENTS=false): each costs a publish "
    "per task state; set FAILOVER_TASK_EVENTS=true on the node to send them"
)

_celery_enable_events = control.Panel.data["enable_events"]
_said = threading.Event()


def enable_events(state: Any) -> dict[str, Any]:
    """Tell worker(s) to send task-related events (refused while the node's setting is off)."""
    if state.app.conf.worker_send_task_events or _sends_task_events(state.consumer):
        return dict(_celery_enable_events(state))
    if not _said.is_set():
        _said.set()
        log.info("refused a remote enable_events: %s", REFUSAL)
    return dict(control.nok(REFUSAL))


def _sends_task_events(consumer: Any) -> bool:
    """Whether the worker sends task events already (`celery worker -E` does, whatever the
    setting): Celery's dispatcher then has no group filter, or one with `task` in it."""
    dispatcher = consumer.event_dispatcher
    return dispatcher is not None and (not dispatcher.groups or "task" in dispatcher.groups)


def install() -> None:
    """Put the node's `enable_events` in Celery's registry of remote control commands.

    The registry is Celery's global `Panel`, which every worker's mailbox reads its
    handlers from, so this replaces the command for every worker of this process."""
    if control.Panel.data.get("enable_events") is not enable_events:
        control.control_command(name="enable_events")(enable_events)
