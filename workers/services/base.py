"""The one interface of a singleton service: all the node, the tasks, status and the metrics
know of one.

A service is owned by one node at a time (a `service_status` row), fenced by its epoch, and
moved, drained and shown by the framework. What it does is its own:

- `configured(settings)`: whether this node's configuration gives it anything to do;
- `check(settings)`: at node start, raise `ConfigError` (one line, exit 2) if it cannot run;
- `adopt(settings, fence)`: once per epoch on its new owner, before its first work: take over
  what a previous owner left unfinished (a no-op where `work` does it anyway);
- `work(settings, fence, send)`: its work at each beat on the owner, every side effect under
  `fence` (a `StaleEpoch` it raises is counted by the framework);
- `status(connection, settings)`: its rows in `failover status` (`section` says where, how
  they are drawn as a table, and which fields the metrics export).

A planned handover (a move, a drain, a failback, a graceful stop) lets the owner's running
work finish first. A service that can tell what of its work still runs says so through
`RunningWork`; for one that cannot, its owner hands it over when the service's turn on
that node is over. A service with a ledger of its own prunes it through `KeepsLedger`; one
whose work must read something each beat sends the read with the beat's ticks through
`ReadsWithTicks`.

A service's Celery tasks are thin wrappers in `workers.runtime.tasks` over bodies the
service owns: a body that may end the service's last running work during a planned
handover is given the node's `HandOver` to call then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection

from workers.fence.fencing import Fence
from workers.settings import Settings
from workers.stores.database import Statement

Row = dict[str, Any]
HandOver = Callable[[Settings, Fence], object]
"""The node's move of a service that is handing over, once its running work has ended
(`workers.runtime.tasks.hand_over_when_idle`), for a service's task body to call."""


class Sender(Protocol):
    """How a service sends Celery tasks: to its node's own queue, or to a named queue
    (`expires` is in seconds from now), or runs one here and now, beside the service work,
    with no message (`here`: a far owner saves the publish and the delivery)."""

    node: str

    def to_node(self, task: str, args: tuple[Any, ...], expires: float) -> None: ...

    def to_queue(self, task: str, args: tuple[Any, ...], queue: str, expires: float) -> None: ...

    def here(self, task: str, args: tuple[Any, ...]) -> None: ...


@dataclass(frozen=True)
class Gauge:
    """A numeric field of a status row exported as a Prometheus gauge."""

    field: str
    metric: str
    help: str


@dataclass(frozen=True)
class Section:
    """Where a service's status rows go: their key in `failover status --json`, their table
    for people, and their gauges for `failover metrics` (labelled by the row's `label`)."""

    key: str
    title: str
    columns: tuple[str, ...]
    cells: Callable[[Row], tuple[str, ...]]
    label: str
    gauges: tuple[Gauge, ...] = ()


@runtime_checkable
class SingletonService(Protocol):
    """A singleton duty that exactly one node performs at a time (see the module docstring)."""

    name: str
    section: Section | None

    def configured(self, settings: Settings) -> bool: ...

    def check(self, settings: Settings) -> None: ...

    def adopt(self, settings: Settings, fence: Fence) -> None: ...

    def work(self, settings: Settings, fence: Fence, send: Sender) -> Any: ...

    def status(self, connection: Connection, settings: Settings) -> list[Row]: ...


@runtime_checkable
class RunningWork(Protocol):
    """Optional: what of a service's work still runs, for a planned handover to wait for.

    - `in_flight(connection, settings)`: what the database shows still running, one line
      each (None when only the owner can tell);
    - `busy_here(settings, incarnation)`: on the owner, whether work the database does not
      show still runs on this host.
    """

    def in_flight(self, connection: Connection, settings: Settings) -> list[str] | None: ...

    def busy_here(self, settings: Settings, incarnation: str) -> bool: ...


@runtime_checkable
class KeepsLedger(Protocol):
    """Optional: a service that keeps a ledger of its own (a row per file, per run) prunes it.

    - `prune(connection, settings, days, limit)`: delete at most `limit` of its finished
      rows older than `days` days (never one still in flight), oldest first; rows deleted.
      The registry calls it on the service's owner, about once an hour
      (`ledger_retention_days`), in a transaction of its own (no fence: nobody acts on
      finished rows).
    """

    def prune(self, connection: Connection, settings: Settings, days: float, limit: int) -> int: ...


@runtime_checkable
class ReadsWithTicks(Protocol):
    """Optional: what a service's work of a beat needs to read, sent in the same round trip
    as the beat's ticks (a far owner saves one a beat).

    - `tick_read(settings)`: the statement to send with this beat's ticks, or None;
    - `read_at_tick(incarnation, rows)`: its rows, kept for this beat's `work` on this
      incarnation.
    """

    def tick_read(self, settings: Settings) -> Statement | None: ...

    def read_at_tick(self, incarnation: str, rows: list[tuple[Any, ...]]) -> None: ...
