"""Where node-bound tasks go: only to a node's own queue `node.<name>`, always with a limit.

Celery publishes a queue-routed task through the anonymous exchange straight onto the
Redis list of that name, so routing survives Redis losing its binding keys. The limit makes
sure a message left in the queue of a dead node can never run when it comes back:

- a message a node sends to itself keeps Celery's `expires` (one host, one clock);
- a message to another node carries a `deadline` on the database clock instead (a header),
  and the receiving task calls `expired` first: Celery's `expires` is an absolute time from
  the sender's clock judged by the receiver's, so a skewed clock would drop or keep it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_task

from workers.fence import db_clock
from workers.settings import Settings
from workers.settings.process import Identity

log = logging.getLogger(__name__)

QUEUE_PREFIX = "node."
SHARED_QUEUE = "failover.processing"

# Task names, as Flower shows them: one definition for the tasks and all who send them.
HEARTBEAT = "failover.heartbeat"
TAKEOVER = "failover.takeover"
MANUAL_FAILOVER = "failover.manual_failover"
SERVICE_WORK = "failover.service_work"
HANDLE_FILES = "failover.handle_files"
SCHEDULED_RUN = "failover.scheduled_run"
TAKEN_RUN = "failover.taken_run"
RUN_SCRIPT = "failover.run_script"
CUSTOM_RUN = "failover.custom_run"


def node_queue(node: str) -> str:
    return f"{QUEUE_PREFIX}{node}"


def node_from_queue(queue: str) -> str | None:
    return queue.removeprefix(QUEUE_PREFIX) if queue.startswith(QUEUE_PREFIX) else None


DEADLINE = "failover_deadline"


def send_to_queue(
    app: Any,
    task: str,
    queue: str,
    args: tuple[Any, ...],
    expires: float | None = None,
    deadline: float | None = None,
) -> Any:
    """Publish `task(*args)` on `queue`, dropped if not started within `expires` s (same host)
    or once the database time passes `deadline` (epoch seconds, between hosts)."""
    headers = None if deadline is None else {DEADLINE: deadline}
    return app.send_task(task, args=args, queue=queue, expires=expires, headers=headers)


def send_to_node(
    app: Any,
    task: str,
    node: str,
    args: tuple[Any, ...],
    expires: float | None = None,
    deadline: float | None = None,
) -> Any:
    """Publish `task(*args)` on `node`'s queue, limited as `send_to_queue` says."""
    return send_to_queue(app, task, node_queue(node), args, expires, deadline)


def expired(settings: Settings, me: Identity) -> bool:
    """Whether the running task's deadline has passed on this node's estimate of the
    database clock (logged when it has); a task sent without one never expires here."""
    request = getattr(current_task, "request", None)
    deadline = getattr(request, DEADLINE, None)
    if deadline is None:
        return False
    late = db_clock.database_time(settings, me.incarnation) - float(deadline)
    if late <= 0:
        return False
    log.info(
        "dropped %s: its deadline passed %.1f s ago on the database clock",
        getattr(current_task, "name", "a task"),
        late,
    )
    return True
