"""The beat scheduler a node embeds: in memory, holding only that node's own entries.

No schedule file: a node's beat lives and dies with its worker, and an interval entry is
sent once after a gap rather than replayed, so there is nothing worth persisting.
"""

from __future__ import annotations

import os

from celery.beat import Scheduler

from beat_schedule.stagger import build_schedule


class NodeScheduler(Scheduler):  # type: ignore[misc]
    """Schedules the heartbeat of the node named by `FAILOVER_NODE_NAME` in this process."""

    def setup_schedule(self) -> None:
        from workers.node import current_identity, current_settings

        me = current_identity()
        interval = current_settings().heartbeat_interval
        self.merge_inplace(build_schedule(me.name, me.incarnation, interval))

    def sync(self) -> None:
        """Nothing to save: the schedule is rebuilt from settings at every start."""

    @property
    def info(self) -> str:
        return f"    . node schedule -> {os.environ.get('FAILOVER_NODE_NAME', '?')}"
