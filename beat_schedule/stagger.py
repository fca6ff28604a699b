"""Deterministic staggering: every node beats at the same interval but at its own phase.

A node's phase is a hash of its name, so two nodes' heartbeats do not land together and
their detection of a dead peer spreads over the interval (the seed's "different time
intervals"). Ticks are aligned to `phase + k * interval` on the host clock; host clocks
only place the ticks, they never decide liveness (the database clock does).
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import BaseSchedule, schedstate

from workers.routing import HEARTBEAT as HEARTBEAT_TASK
from workers.routing import node_queue


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

    def is_due(self, last_run_at: datetime) -> schedstate:
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
