"""Where node-bound tasks go: only to a node's own queue `node.<name>`, always with an expiry.

Celery publishes a queue-routed task through the anonymous exchange straight onto the
Redis list of that name, so routing survives Redis losing its binding keys. The expiry
makes sure a message left in the queue of a dead node can never run when it comes back.
"""

from __future__ import annotations

from typing import Any

QUEUE_PREFIX = "node."
SHARED_QUEUE = "failover.processing"

# Task names, as Flower shows them: one definition for the tasks and all who send them.
HEARTBEAT = "failover.heartbeat"
TAKEOVER = "failover.takeover"
MANUAL_FAILOVER = "failover.manual_failover"
SERVICE_WORK = "failover.service_work"
HANDLE_FILES = "failover.handle_files"
SCHEDULED_RUN = "failover.scheduled_run"
RUN_SCRIPT = "failover.run_script"


# A node sends no heartbeat or service work while the previous one still waits in its queue,
# unless that one was sent this many intervals ago (it was lost: the node must beat on).
WAITING_MAX_AGE = 1.5


def node_queue(node: str) -> str:
    return f"{QUEUE_PREFIX}{node}"


def node_from_queue(queue: str) -> str | None:
    return queue.removeprefix(QUEUE_PREFIX) if queue.startswith(QUEUE_PREFIX) else None


def send_to_node(app: Any, task: str, node: str, args: tuple[Any, ...], expires: float) -> Any:
    """Publish task `task(*args)` on `node`'s queue, dropped if not started within `expires` s."""
    return app.send_task(task, args=args, queue=node_queue(node), expires=expires)
