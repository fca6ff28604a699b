"""A node's estimate of the database clock, so deadlines between hosts never read a host clock.

Each heartbeat reads the database time; the node keeps, in its incarnation's local state,
the offset between that time and this host's monotonic clock at the middle of the round
trip. Its estimate of the database time is then `monotonic() + offset`: off by at most half
a round trip, whatever this host's wall clock says. A message sent to another node carries
a deadline on the database clock (`workers.queues.routing`), which the receiver judges with its own
estimate.
"""

from __future__ import annotations

import time
from datetime import datetime

from workers.fence import local_state
from workers.settings import Settings
from workers.stores import store
from workers.stores.database import transaction

OFFSET = "db_clock_offset"


def sample(incarnation: str, db_now: datetime, asked: float, answered: float) -> None:
    """Keep the database time `db_now`, read between monotonic stamps `asked` and `answered`."""
    local_state.remember(incarnation, OFFSET, db_now.timestamp() - (asked + answered) / 2)


def estimate(incarnation: str) -> float | None:
    """The database time now (epoch seconds) from the last sample, or None without one."""
    offset = local_state.recall(incarnation, OFFSET)
    return None if offset is None else time.monotonic() + offset


def database_time(settings: Settings, incarnation: str) -> float:
    """The database time now (epoch seconds): the estimate, or one read (and kept) without one."""
    known = estimate(incarnation)
    if known is not None:
        return known
    asked = time.monotonic()
    with transaction(settings) as connection:
        db_now = store.database_now(connection)
    answered = time.monotonic()
    sample(incarnation, db_now, asked, answered)
    return db_now.timestamp() + (answered - asked) / 2
