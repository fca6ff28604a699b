"""The beat scheduler a node embeds: in memory, holding only that node's own entries.

No schedule file: a node's beat lives and dies with its worker, and an interval entry is
sent once after a gap rather than replayed, so there is nothing worth persisting.

Each heartbeat it sends carries its scheduled tick and how long the previous publish took
(one broker round trip), and none is sent while the previous one still waits in the
node's queue: a node that falls behind skips beats instead of queueing expired ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import schedstate

from beat_schedule.stagger import Staggered, build_schedule
from workers import backlog, local_state
from workers.routing import HEARTBEAT, WAITING_MAX_AGE


def broker_server(connection: Any) -> str | None:
    """The Redis server a kombu connection's publishes reach, as `host:port` (or a socket
    path); with Sentinel, the master it was last given. Read from the client's connection
    pool: no round trip. None when the transport does not say."""
    try:
        pool = connection.default_channel.client.connection_pool
    except Exception:
        return None
    master = getattr(pool, "master_address", None)
    if master:
        return f"{master[0]}:{master[1]}"
    options = getattr(pool, "connection_kwargs", {})
    if options.get("path"):
        return str(options["path"])
    if options.get("host"):
        return f"{options['host']}:{options.get('port', 6379)}"
    return None


RETRY_FAILED_PUBLISH = 0.2


class NodeScheduler(Scheduler):  # type: ignore[misc]
    """Schedules the heartbeat of the node named by `FAILOVER_NODE_NAME` in this process."""

    broker_round_trip_ms: float | None = None
    broker_server: str | None = None
    publish_failed = False

    def setup_schedule(self) -> None:
        from workers.node import current_identity, current_settings

        me = current_identity()
        interval = current_settings().heartbeat_interval
        self.incarnation = me.incarnation
        self.merge_inplace(build_schedule(me.name, me.incarnation, interval))

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Send the heartbeat with its tick and the last publish time, unless one waits; a
        publish that failed (the broker is failing over) leaves no heartbeat waiting."""
        schedule = entry.schedule
        if not isinstance(schedule, Staggered):
            return super().apply_async(entry, producer, advance, **kwargs)
        queue = entry.options["queue"]
        max_age = WAITING_MAX_AGE * schedule.interval
        if not backlog.may_send(self.app, self.incarnation, HEARTBEAT, queue, max_age):
            return None
        entry.kwargs = {
            "tick": schedule.last_slot(time.time()),
            "broker_round_trip_ms": self.broker_round_trip_ms,
            "broker_server": self.broker_server,
        }
        started = time.perf_counter()
        try:
            result = super().apply_async(entry, producer, advance, **kwargs)
        except Exception:
            local_state.taken(self.incarnation, HEARTBEAT)
            self.publish_failed = True
            raise
        self.publish_failed = False
        self.broker_round_trip_ms = (time.perf_counter() - started) * 1000
        self.broker_server = broker_server(self.connection)
        return result

    def is_due(self, entry: ScheduleEntry) -> Any:
        """A heartbeat whose last publish failed is due again at once (see `_when`)."""
        if self.publish_failed and isinstance(entry.schedule, Staggered):
            return schedstate(True, RETRY_FAILED_PUBLISH)
        return super().is_due(entry)

    def _when(self, entry: ScheduleEntry, next_time_to_run: float, *args: Any) -> float:
        """When a heartbeat is next due: its next slot, not "now + delay".

        Celery's beat puts the next run at the time it finished publishing plus the delay it
        computed before publishing, so every beat lands late by one publish, one broker
        round trip (150 ms for a far node). The staggered slots are absolute: use them.
        After a failed publish (the broker is failing over) the next try is sooner: a node
        that waited for its next slot would renew up to an interval later than it could.
        """
        schedule = entry.schedule
        if isinstance(schedule, Staggered) and next_time_to_run:
            if self.publish_failed:
                return time.time() + RETRY_FAILED_PUBLISH
            return schedule.next_slot(time.time())
        return super()._when(entry, next_time_to_run, *args)  # type: ignore[no-any-return]

    def sync(self) -> None:
        """Nothing to save: the schedule is rebuilt from settings at every start."""

    @property
    def info(self) -> str:
        return f"    . node schedule -> {os.environ.get('FAILOVER_NODE_NAME', '?')}"
