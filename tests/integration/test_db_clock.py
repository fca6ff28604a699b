"""A node's estimate of the database clock: read once without a sample, then kept locally."""

from __future__ import annotations

import time
from datetime import timedelta

from workers.fence import db_clock, local_state
from workers.settings.process import new_incarnation
from workers.stores import store
from workers.stores.database import transaction


def test_the_estimate_follows_the_database_clock_not_the_host_clock(settings):
    incarnation = new_incarnation()
    try:
        # Without a sample, the database is asked, and its answer kept
        assert db_clock.estimate(incarnation) is None
        with transaction(settings) as connection:
            before = store.database_now(connection).timestamp()
        read = db_clock.database_time(settings, incarnation)
        assert read >= before
        assert db_clock.estimate(incarnation) is not None
        # A sample an hour ahead of the host (the database's clock, say) moves the estimate
        # by an hour, whatever the host's wall clock says
        with transaction(settings) as connection:
            db_now = store.database_now(connection) + timedelta(hours=1)
        stamp = time.monotonic()
        db_clock.sample(incarnation, db_now, stamp, stamp)
        estimate = db_clock.estimate(incarnation)
        assert estimate is not None
        assert db_now.timestamp() <= estimate < db_now.timestamp() + 60
    finally:
        local_state.forget(incarnation)
