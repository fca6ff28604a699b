"""A frozen picture of the cluster, read once per heartbeat, with the database time it was read at.

Everything here is plain data: the decision code judges a snapshot without any I/O or
clock of its own, so it can be tested with hand-built snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Node:
    """One row of `server_registry`, as far as ownership decisions care."""

    id: int
    name: str
    region: str
    is_active: bool
    last_heartbeat_at: datetime
    lease_started_at: datetime
    lease_timeout: float
    draining: bool = False
    stopped_at: datetime | None = None
    incarnation: str = ""
    app_healthy: bool | None = None
    last_verdict: str | None = None
    drain_grace: float | None = None
    joining_until: datetime | None = None

    @property
    def lease_expires_at(self) -> datetime:
        return self.last_heartbeat_at + timedelta(seconds=self.lease_timeout)

    def lease_left(self, now: datetime) -> float:
        """Seconds until the lease expires (negative once it has)."""
        return (self.lease_expires_at - now).total_seconds()

    def is_joining(self, now: datetime) -> bool:
        """Registered and starting, not yet renewed through its consumer: it holds its name
        (until `joining_until`) but is no live node, candidate or judge."""
        return (
            not self.is_active
            and self.stopped_at is None
            and self.joining_until is not None
            and self.joining_until > now
        )

    def is_live(self, now: datetime) -> bool:
        """Active, running and holding a fresh lease at database time `now`."""
        return self.is_active and self.stopped_at is None and self.lease_left(now) > 0


@dataclass(frozen=True)
class Service:
    """One row of `service_status`: who owns the service and at which epoch."""

    name: str
    owner_id: int | None
    epoch: int
    acquired_at: datetime | None = None
    reason: str | None = None
    home_region: str | None = None
    handover_to: str | None = None
    handover_since: datetime | None = None
    handover_until: datetime | None = None
    handover_reason: str | None = None

    @property
    def handing_over(self) -> bool:
        """A planned handover is in progress: its owner starts nothing new for it."""
        return self.handover_since is not None

    def grace_left(self, now: datetime) -> float:
        """Seconds the handover's grace still gives the owner's running work (0 when none)."""
        if self.handover_until is None:
            return 0.0
        return max(0.0, (self.handover_until - now).total_seconds())


@dataclass(frozen=True)
class Snapshot:
    """The registry and the services at database time `now`.

    A heartbeat's snapshot may hold only the nodes it must judge (itself, the owners, the
    peers that may have expired): `complete` is False then, and the database returns every
    node whenever a choice among candidates may be needed.
    """

    now: datetime
    nodes: tuple[Node, ...]
    services: tuple[Service, ...]
    complete: bool = True

    def node(self, name: str) -> Node | None:
        return next((node for node in self.nodes if node.name == name), None)

    def node_by_id(self, node_id: int | None) -> Node | None:
        return next((node for node in self.nodes if node.id == node_id), None)

    def service(self, name: str) -> Service | None:
        return next((service for service in self.services if service.name == name), None)
