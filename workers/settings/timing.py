"""Every timing that derives from another, in one place, so that a change of one rule is one edit.

The configured numbers are the heartbeat interval, the lease, the database timeout and the
handover grace; everything a node waits, expires or warns after follows from them here.
"""

from __future__ import annotations

import math
from typing import Protocol

from workers.settings.constants import ENV_PREFIX


class Configured(Protocol):
    """The configured timings the derivations read (`workers.settings.Settings` has them)."""

    @property
    def heartbeat_interval(self) -> float: ...
    @property
    def lease_timeout(self) -> float: ...
    @property
    def database_timeout(self) -> float: ...
    @property
    def region(self) -> str: ...
    @property
    def region_lease_timeout(self) -> dict[str, float]: ...


LATE_BEATS = 1.5
"""A lease must outlast this many heartbeat intervals (one late beat) ..."""
SLOW_ROUND_TRIPS = 2
"""... plus this many database round trips at their timeout."""
SLOW_CYCLE_FRACTION = 1 / 3
"""A heartbeat cycle longer than this share of the lease is logged: the lease is at risk."""


WAITING_BEATS = 1.5
"""A node sends no heartbeat or service work while the previous one still waits in its
queue, unless that one was sent this many intervals ago (it was lost: the node must beat on)."""


def waiting_max_age(interval: float) -> float:
    """How old a message of a kind sent every `interval` s may wait before another is sent."""
    return WAITING_BEATS * interval


def nudge_deadline(settings: Configured) -> float:
    """Seconds a nudged heartbeat (wake a peer to act now) is worth delivering: one beat, after
    which the peer's own beat has come anyway."""
    return settings.heartbeat_interval


def turn_wait(settings: Configured) -> float:
    """How long one beat's service work waits for the previous one before giving its turn up."""
    return settings.heartbeat_interval / 2


def heartbeat_pool_wait(settings: Configured) -> float:
    """How long a heartbeat waits for its one pooled connection: at most its lease (1 s floor)."""
    return max(1.0, settings.lease_timeout)


def idle_transaction_ms(settings: Configured) -> int:
    """A transaction left idle (a frozen process) ends at the lease, so it never holds a row
    lock past it (milliseconds, 1 s floor)."""
    return max(1000, int(settings.lease_timeout * 1000))


def lease_floor(heartbeat_interval: float, database_timeout: float) -> float:
    """The shortest lease a node can keep: one late heartbeat plus two slow round trips."""
    return LATE_BEATS * heartbeat_interval + SLOW_ROUND_TRIPS * database_timeout


def check_leases(settings: Configured) -> None:
    """Refuse any lease (the default or a region's) shorter than `lease_floor`, in one line."""
    needed = lease_floor(settings.heartbeat_interval, settings.database_timeout)
    leases = {f"{ENV_PREFIX}LEASE_TIMEOUT": settings.lease_timeout} | {
        f"{ENV_PREFIX}REGION_LEASE_TIMEOUT[{region}]": lease
        for region, lease in settings.region_lease_timeout.items()
    }
    for name, lease in leases.items():
        if lease < needed:
            raise ValueError(
                f"{name} ({lease:g} s) must be at least "
                f"{LATE_BEATS} x {ENV_PREFIX}HEARTBEAT_INTERVAL ({settings.heartbeat_interval:g} s)"
                f" + {SLOW_ROUND_TRIPS} x {ENV_PREFIX}DATABASE_TIMEOUT "
                f"({settings.database_timeout:g} s) = {needed:g} s"
            )


def node_lease(settings: Configured) -> float:
    """This node's lease: its region's threshold if one is set (long database round trips)."""
    return settings.region_lease_timeout.get(settings.region, settings.lease_timeout)


def longest_lease(settings: Configured) -> float:
    """The longest lease any node of the cluster may hold (a far region's, if longer)."""
    return max([settings.lease_timeout, *settings.region_lease_timeout.values()])


def surely_gone_after(settings: Configured) -> float:
    """Seconds after which any node that lost the database has stopped its side effects: the
    longest lease and a heartbeat (its guard acts within a beat of its local deadline)."""
    return longest_lease(settings) + settings.heartbeat_interval


def own_work_lost_after(settings: Configured) -> float:
    """Seconds after which this node's own unfinished work is surely fenced out: its lease and
    a heartbeat."""
    return node_lease(settings) + settings.heartbeat_interval


def run_lost_after(settings: Configured, run_timeout: float) -> float:
    """Seconds after which a run that never reported is lost: its timeout and a lease."""
    return run_timeout + settings.lease_timeout


def slow_cycle_ms(settings: Configured) -> float:
    """A heartbeat cycle slower than this (milliseconds) puts the lease at risk."""
    return node_lease(settings) * SLOW_CYCLE_FRACTION * 1000


def outage_patience(settings: Configured) -> float:
    """How long a fenced outcome waits for the database: longer than a managed failover
    (Patroni's default loop is 10 s) and than a few leases."""
    return max(30.0, 3 * node_lease(settings))


def answer_deadline(settings: Configured) -> float:
    """How long a statement may go unanswered: the server's own bound (the database
    timeout), plus as much again and a second for the network and a busy client."""
    return 2 * settings.database_timeout + 1.0


def connect_timeout(settings: Configured) -> int:
    """libpq's connect timeout (whole seconds, at least 2): twice the database timeout."""
    return max(2, math.ceil(settings.database_timeout * 2))


def shared_batch_expiry(settings: Configured) -> float:
    """How long a handler batch may wait in the shared queue (its rows are fenced anyway)."""
    return max(60.0, settings.lease_timeout * 20)
