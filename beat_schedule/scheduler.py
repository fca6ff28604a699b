"""The beat scheduler a node embeds: in memory, holding only that node's own entries.

No schedule file: a node's beat lives and dies with its worker, and an interval entry is
sent once after a gap rather than replayed, so there is nothing worth persisting.

Each heartbeat it sends carries its scheduled tick and how long the previous publish took
(one broker round trip), and none is sent while the previous one still waits in the
node's queue: a node that falls behind skips beats instead of queueing expired ones.

Every wait is measured on the monotonic clock (`SlotTimer`); the wall clock only places the
slots. Celery's own scheduler keeps wall-clock due times, so a step back of S seconds would
silence the heartbeats for about S and let the peers take over a healthy owner.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery.beat import ScheduleEntry, Scheduler

from beat_schedule.clock import wall_time
from beat_schedule.stagger import SlotTimer, Staggered, build_schedule
from workers.fence import local_state
from workers.queues import backlog, joining
from workers.queues.routing import HEARTBEAT
from workers.settings import timing
from workers.settings.process import current_identity, current_settings


def publishing_pool(producer: Any) -> Any:
    """The redis-py connection pool the producer's channel publishes through, or None.

    The producer's own channel, not its connection's default one: a publish retried after
    a broker failover goes on a new channel (kombu revives the producer with it), and the
    default channel's pool may still name the old Sentinel master, or none.
    """
    try:
        channel = producer.channel
        if not hasattr(channel, "client") and callable(channel):
            channel = channel()
        return channel.client.connection_pool
    except Exception:
        return None


def broker_server(pool: Any) -> str | None:
    """The Redis server a connection pool reaches, as `host:port` (or a socket path); with
    Sentinel, the master it was last given. No round trip. None when the pool does not say."""
    master = getattr(pool, "master_address", None)
    if master:
        return f"{master[0]}:{master[1]}"
    options = getattr(pool, "connection_kwargs", {})
    if options.get("path"):
        return str(options["path"])
    if options.get("host"):
        return f"{options['host']}:{options.get('port', 6379)}"
    return None


def broker_encrypted(pool: Any) -> bool | None:
    """Whether a connection pool's connections use TLS (their class says; no round trip), or
    None when the pool does not say."""
    connection_class = getattr(pool, "connection_class", None)
    if not isinstance(connection_class, type):
        return None
    return issubclass(connection_class, redis.SSLConnection)


RETRY_FAILED_PUBLISH = 0.2
CONSUMER_POLL = 0.02
"""Seconds between two looks at whether the node's consumer consumes (while it starts)."""


class NodeScheduler(Scheduler):  # type: ignore[misc]
    """Schedules the heartbeat of the node named by `FAILOVER_NODE_NAME` in this process."""

    broker_round_trip_ms: float | None = None
    broker_server: str | None = None
    broker_encrypted: bool | None = None
    publish_failed = False
    late_s = 0.0
    held_for_consumer = False

    def setup_schedule(self) -> None:
        me = current_identity()
        interval = current_settings().heartbeat_interval
        self.incarnation = me.incarnation
        self.timers: dict[str, SlotTimer] = {}
        self.merge_inplace(build_schedule(me.name, me.incarnation, interval))

    def tick(self, *_: Any, **__: Any) -> float:
        """Send each heartbeat whose slot has come; return how long to sleep before the next
        look. Both measured on the monotonic clock, so a wall-clock step changes nothing.

        Nothing is sent while the node's consumer is not consuming (it starts, or restarts
        after a lost broker connection): the heartbeat could not be consumed, and a node
        joins only through its consumer. Once it consumes, the heartbeat goes at once
        rather than at its next slot: the first renewal comes as early as it can."""
        if joining.waiting_for_consumer():
            self.held_for_consumer = True
            return CONSUMER_POLL
        now_due = self.held_for_consumer
        self.held_for_consumer = False
        for entry in self.schedule.values():
            timer = self._timer(entry)
            left = (
                min(0.0, timer.left(time.monotonic())) if now_due else timer.left(time.monotonic())
            )
            if left <= 0:
                self.late_s = -left
                self.apply_entry(entry, producer=self.producer)
                self._rearm(timer)
        waits = [timer.left(time.monotonic()) for timer in self.timers.values()]
        return max(0.0, min([float(self.max_interval), *waits]))

    def _timer(self, entry: ScheduleEntry) -> SlotTimer:
        timer = self.timers.get(entry.name)
        if timer is None:
            timer = self.timers[entry.name] = SlotTimer(
                entry.schedule, wall_time(), time.monotonic()
            )
        return timer

    def _rearm(self, timer: SlotTimer) -> None:
        """Due at the next slot, or soon after a failed publish (the broker is failing over):
        a node that waited for its next slot would renew up to an interval later than it could."""
        if self.publish_failed:
            timer.retry(time.monotonic(), RETRY_FAILED_PUBLISH)
        else:
            timer.next_slot(wall_time(), time.monotonic())

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Send the heartbeat with its tick and the last publish time, unless one waits; a
        publish that failed (the broker is failing over) leaves no heartbeat waiting."""
        schedule = entry.schedule
        if not isinstance(schedule, Staggered):
            return super().apply_async(entry, producer, advance, **kwargs)
        queue = entry.options["queue"]
        max_age = timing.waiting_max_age(schedule.interval)
        if not backlog.may_send(self.app, self.incarnation, HEARTBEAT, queue, max_age):
            return None
        entry.kwargs = {
            "tick": time.time() - self.late_s,
            "broker_round_trip_ms": self.broker_round_trip_ms,
            "broker_server": self.broker_server,
            "broker_encrypted": self.broker_encrypted,
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
        pool = publishing_pool(producer or self.producer)
        self.broker_server = broker_server(pool)
        self.broker_encrypted = broker_encrypted(pool)
        return result

    def sync(self) -> None:
        """Nothing to save: the schedule is rebuilt from settings at every start."""

    @property
    def info(self) -> str:
        return f"    . node schedule -> {os.environ.get('FAILOVER_NODE_NAME', '?')}"
