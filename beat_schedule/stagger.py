"""Deterministic staggering: every node beats at the same interval but at its own phase.

A node's phase is a hash of its name, so two nodes' heartbeats do not land together and
their detection of a dead peer spreads over the interval (the seed's "different time
intervals"). Ticks are aligned to `phase + k * interval` on the host's wall clock; host
clocks only place the ticks, they never decide liveness (the database clock does).

The wall clock only says how long to wait from now for the next slot; the node's scheduler
then waits that long on the monotonic clock (`SlotTimer`), so a step of the wall clock (an
NTP correction, a VM resumed) neither silences the heartbeats nor bunches them.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule, schedstate

from workers.queues.routing import HEARTBEAT as HEARTBEAT_TASK
from workers.queues.routing import node_queue


def stagger_phase(node: str, interval: float) -> float:
    """The node's offset within the interval, in seconds: stable for a name, spread by hash."""
    digest = hashlib.sha256(node.encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return fraction * interval


class Staggered(BaseSchedule):  # type: ignore[misc]
    """Due at `phase + k * interval` (Unix seconds), once per slot, never replaying missed ones."""

    def __init__(self, interval: float, phase: float, app: Any = None) -> None:
        super().__init__(app=app)
        self.interval = interval
        self.phase = phase

    def next_slot(self, after: float) -> float:
        """The first tick strictly after the Unix time `after`."""
        k = math.floor((after - self.phase) / self.interval) + 1
        return self.phase + k * self.interval

    def last_slot(self, at: float) -> float:
        """The latest tick at or before the Unix time `at`."""
        return self.next_slot(at) - self.interval

    def until_next_slot(self, now: float) -> float:
        """Seconds from the Unix time `now` to the next tick: within (0, interval], whatever
        `now` is (a wall clock stepped far away cannot turn it into a long silence)."""
        wait = self.next_slot(now) - now
        return wait if 0 < wait <= self.interval else self.interval

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Celery's interface, on wall-clock times; the node's scheduler uses `SlotTimer`."""
        now = time.time()
        due_at = self.next_slot(last_run_at.timestamp())
        if now >= due_at:
            return schedstate(True, self.next_slot(now) - now)
        return schedstate(False, due_at - now)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        left = self.next_slot(last_run_at.timestamp()) - time.time()
        return timedelta(seconds=max(0.0, left))

    def __repr__(self) -> str:
        return f"<every {self.interval:g} s at phase {self.phase:.3f} s>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.interval, self.phase))


class SlotTimer:
    """When a staggered entry is next due, kept on the monotonic clock.

    The slot is chosen on the wall clock (that spreads the phases of nodes on different
    hosts), but only as a wait from now; the due time itself is monotonic, so a step of the
    wall clock while the timer runs changes nothing.
    """

    def __init__(self, schedule: Staggered, wall: float, now: float) -> None:
        self.schedule = schedule
        self.due_at = now + schedule.until_next_slot(wall)

    def left(self, now: float) -> float:
        """Seconds until due from the monotonic time `now`; zero or less once due."""
        return self.due_at - now

    def next_slot(self, wall: float, now: float) -> None:
        """Fired at the monotonic `now`: due again at the next slot after the wall time `wall`."""
        self.due_at = now + self.schedule.until_next_slot(wall)

    def retry(self, now: float, after: float) -> None:
        """Due again `after` seconds from the monotonic `now` (a failed publish)."""
        self.due_at = now + after


def build_schedule(node: str, incarnation: str, interval: float) -> dict[str, dict[str, Any]]:
    """The node's whole schedule: its heartbeat on `node.<name>`, expiring within one interval."""
    return {
        f"{HEARTBEAT_TASK}:{node}": {
            "task": HEARTBEAT_TASK,
            "schedule": Staggered(interval, stagger_phase(node, interval)),
            "args": (node, incarnation),
            "options": {"queue": node_queue(node), "expires": interval},
        }
    }
