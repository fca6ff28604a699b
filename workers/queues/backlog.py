"""At most one heartbeat and one service-work message waiting in a node's queue.

A node that falls behind (a slow link to the broker, a busy pool) must catch up by skipping
stale work, not by taking expired messages off its queue one round trip at a time. So the
sender of each kind marks it waiting (`local_state`), the worker clears the mark when it
takes the message off the queue (to run it or to drop it as expired), and no new message of
that kind is sent while the mark stands.

A mark can outlive its message: Redis may lose it (restarted empty). Once a mark is older
than `max_age`, the queue itself is asked (about two broker round trips, only then): empty,
the message was lost and a new one goes; not empty, the node is simply behind.
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import ChannelError, OperationalError

from workers.fence import local_state


def queue_length(app: Any, queue: str) -> int:
    """Messages waiting in `queue` on the broker (0 when Redis holds no list for it, or when
    the broker cannot be asked now: then the publish itself is tried, and fails fast)."""
    with app.pool.acquire(block=True) as connection:
        try:
            connection.ensure_connection(max_retries=1, **ASK_ONCE)
            return int(connection.default_channel.queue_declare(queue, passive=True).message_count)
        except (ChannelError, OperationalError, OSError):
            return 0


ASK_ONCE = {"interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
"""Kombu waits 2 s before its first retry by default: the beat must not wait that long."""


def may_send(app: Any, incarnation: str, kind: str, queue: str, max_age: float) -> bool:
    """True when no message of `kind` waits in `queue` for this incarnation; then marks one."""
    age = local_state.waiting_for(incarnation, kind)
    if age is not None and (age < max_age or queue_length(app, queue) > 0):
        return False
    local_state.mark_waiting(incarnation, kind)
    return True
