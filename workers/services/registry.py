"""Which services a node runs, and the framework's calls into them.

`services_for(settings)`: the built-ins, then the TOML file's `[services.<name>]`, then the
entry points of group `celery_failover.services` (a TOML table without a handler gives an
entry point its interval).

Retention: after its work, the owner of a service prunes, about once an hour per node
(`prune_due`, a monotonic throttle in the incarnation's local state), the service's own
ledger (`KeepsLedger`) and the node events (`workers.stores.retention`), at most
`retention.LIMIT` rows per table per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert

from workers.errors import ConfigError
from workers.fence import local_state
from workers.fence.fencing import Fence
from workers.services.app_script import SCRIPTS, AppScriptService
from workers.services.base import (
    KeepsLedger,
    ReadsWithTicks,
    Row,
    RunningWork,
    Section,
    Sender,
    SingletonService,
)
from workers.services.custom import CUSTOM, CustomService, load_spec
from workers.services.folder_monitor import FOLDERS, FolderMonitorService
from workers.settings import (
    BUILTIN_SERVICES,
    DEFAULT_SERVICE_TIMEOUT,
    ENTRY_POINT_GROUP,
    Settings,
)
from workers.stores import retention
from workers.stores.database import Statement, transaction
from workers.stores.tables import service_status as services_t

log = logging.getLogger(__name__)
SECTIONS: tuple[Section, ...] = (FOLDERS, SCRIPTS, CUSTOM)
_cache: list[tuple[Settings, dict[str, SingletonService]]] = []
_undeclared_said: set[tuple[str, int]] = set()
PRUNE_EVERY = 3600.0


def _load_entry_point(name: str, entry: EntryPoint) -> Any:
    try:
        return entry.load()
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise ConfigError(
            f"service {name}: entry point {entry.value!r} cannot be imported: {reason}"
        ) from None


def _custom(settings: Settings) -> dict[str, SingletonService]:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    custom: dict[str, SingletonService] = {}
    for name in settings.service_names():
        if name in BUILTIN_SERVICES:
            continue
        declared = settings.services.get(name)
        interval = declared.interval if declared else None
        timeout = declared.timeout if declared else DEFAULT_SERVICE_TIMEOUT
        if declared and declared.handler:
            loader = partial(load_spec, name, declared.handler)
            custom[name] = CustomService(name, declared.handler, interval, loader, timeout)
        elif name in found:
            entry = found[name]
            loader = partial(_load_entry_point, name, entry)
            custom[name] = CustomService(name, entry.value, interval, loader, timeout)
        else:
            raise ConfigError(
                f'service {name}: no handler (set handler = "package.module:function", '
                f"or install a package with a {ENTRY_POINT_GROUP} entry point named {name})"
            )
    return custom


def services_for(settings: Settings) -> dict[str, SingletonService]:
    """Every service this configuration declares, by name: the built-ins first."""
    for cached, known in _cache:
        if cached is settings:
            return known
    services: dict[str, SingletonService] = {
        FolderMonitorService.name: FolderMonitorService(),
        AppScriptService.name: AppScriptService(),
        **_custom(settings),
    }
    _cache[:] = [(settings, services)]
    return services


def check_all(settings: Settings) -> None:
    """At node start: every service can run here (one `ConfigError` line if one cannot)."""
    for service in services_for(settings).values():
        service.check(settings)


def declare(connection: Connection, settings: Settings) -> None:
    """Give each declared service its row (unowned, epoch 0) unless it has one already."""
    rows = [{"service_type": name, "epoch": 0} for name in services_for(settings)]
    connection.execute(
        insert(services_t).values(rows).on_conflict_do_nothing(index_elements=["service_type"])
    )


def known_services(connection: Connection) -> list[str]:
    """The cluster's services: those with a row in the database, whoever declared them."""
    rows = connection.execute(select(services_t.c.service_type).order_by(services_t.c.service_type))
    return list(rows.scalars())


def tick_reads(settings: Settings, owned: list[str]) -> list[tuple[ReadsWithTicks, Statement]]:
    """What the work of the `owned` services needs to read this beat, to send with the
    beat's ticks (`ReadsWithTicks`), each with the service to give its rows to."""
    reads: list[tuple[ReadsWithTicks, Statement]] = []
    known = services_for(settings)
    for name in owned:
        service = known.get(name)
        if isinstance(service, ReadsWithTicks):
            statement = service.tick_read(settings)
            if statement is not None:
                reads.append((service, statement))
    return reads


def run_work(settings: Settings, fence: Fence, send: Sender) -> Any:
    """A service's work on its owner: adopt once per epoch, then its work of this beat."""
    service = services_for(settings).get(fence.service)
    if service is None:
        _undeclared(fence)
        return None
    key = f"adopted.{fence.service}"
    if local_state.recall(fence.me.incarnation, key) != fence.epoch:
        service.adopt(settings, fence)
        local_state.remember(fence.me.incarnation, key, fence.epoch)
    done = service.work(settings, fence, send)
    prune_when_due(settings, fence, service)
    return done


def prune_due(incarnation: str, service: str, every: float = PRUNE_EVERY) -> bool:
    """Whether this node should prune `service`'s ledger now; if so, the next is `every` s away."""
    key = f"pruned.{service}"
    last = local_state.recall(incarnation, key)
    now = time.monotonic()
    if last is not None and now - last < every:
        return False
    local_state.remember(incarnation, key, now)
    return True


def prune_ledger(
    connection: Connection,
    settings: Settings,
    service: SingletonService | None,
    days: float,
    limit: int = retention.LIMIT,
) -> int:
    """Prune the ledger of `service`, if it keeps one (`KeepsLedger`); rows deleted."""
    if not isinstance(service, KeepsLedger):
        return 0
    return service.prune(connection, settings, days, limit)


def prune_when_due(settings: Settings, fence: Fence, service: SingletonService | None) -> int:
    """On the owner, about once an hour: delete its service's finished ledger rows, and the
    node events, older than `ledger_retention_days` (no fence needed: nobody acts on
    finished rows; a second prune that hour by another service's owner finds nothing);
    rows deleted."""
    if not prune_due(fence.me.incarnation, fence.service):
        return 0
    days = settings.ledger_retention_days
    with transaction(settings) as connection:
        deleted = prune_ledger(connection, settings, service, days)
        deleted += retention.prune_node_events(connection, days)
    if deleted:
        log.info(
            "deleted %d finished %s ledger rows older than %g days",  deleted, fence.service, days,
        )  # fmt: skip
    return deleted


def _undeclared(fence: Fence) -> None:
    """Say once per epoch that this node owns a service its configuration does not declare."""
    if (fence.service, fence.epoch) in _undeclared_said:
        return
    _undeclared_said.add((fence.service, fence.epoch))
    log.warning(
        "owns %s at epoch %d but its configuration does not declare it: it does "
        "nothing here (give every node the same [services] table)",
        fence.service,
        fence.epoch,
    )


def running_work(settings: Settings, service: str) -> Callable[[Connection], list[str] | None]:
    """What of `service`'s work the database shows still running (for a planned handover to
    wait for); None when it cannot tell (its owner then decides)."""
    found = services_for(settings).get(service)
    if not isinstance(found, RunningWork):
        return lambda _connection: None
    return partial(found.in_flight, settings=settings)


def running_here(
    settings: Settings, incarnation: str, service: str
) -> Callable[[Connection], list[str]]:
    """On the owner: what of `service`'s work still runs, from the database and this host."""
    found = services_for(settings).get(service)

    def running(connection: Connection) -> list[str]:
        if not isinstance(found, RunningWork):
            return []
        if found.busy_here(settings, incarnation):
            return ["a run on this node"]
        return found.in_flight(connection, settings) or []

    return running


def status_sections(connection: Connection, settings: Settings) -> dict[str, list[Row]]:
    """Each section's rows for `failover status` and the metrics, from every service."""
    sections: dict[str, list[Row]] = {section.key: [] for section in SECTIONS}
    for service in services_for(settings).values():
        if service.section is not None:
            rows = service.status(connection, settings)
            sections.setdefault(service.section.key, []).extend(rows)
    return sections
