"""The worker's broker consumer, reconnecting within half a second of the broker's return.

Celery's consumer retries a lost broker connection after 2, 4, 6, ... up to 30 s (kombu's
defaults). A node whose heartbeats cannot arrive looks dead, so after a broker outage the
nodes would come back seconds apart and the last one could lose its services to the
first. Retrying every half second at most keeps the survivors within one lease of each
other, and follows a Sentinel promotion (about 2 s) well within a lease.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.worker.consumer import Consumer

RECONNECT_INTERVALS = {"interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


class NodeConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer with short, bounded reconnection intervals."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        return super().ensure_connected(conn)
