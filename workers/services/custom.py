"""A team's own singleton service: a handler declared in the TOML file (`[services.<name>]`)
or a Python entry point (group `celery_failover.services`).

On its owner, at most once per `interval` (every service work when unset) and never twice
at once on a node, the handler is called as `handler(fence)`. `fence.transaction()` is a
transaction open only while this node owns the service at `fence.epoch`: what the handler
writes there commits under the epoch or not at all. An entry point may instead name an
object implementing `SingletonService`, which is then called like a built-in.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from workers import local_state
from workers.errors import ConfigError, StaleEpoch
from workers.fencing import Fence, fenced, reject
from workers.services.base import Gauge, Row, Section, Sender, SingletonService
from workers.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceFence:
    """What a handler receives: which service, on which node, at which epoch, and a fenced
    transaction for its own database writes."""

    service: str
    node: str
    epoch: int
    settings: Settings = field(repr=False)
    fence: Fence = field(repr=False)

    @classmethod
    def of(cls, settings: Settings, fence: Fence) -> ServiceFence:
        return cls(fence.service, fence.me.name, fence.epoch, settings, fence)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction that commits only while this node still owns the service at this
        epoch; otherwise `StaleEpoch` is raised (and counted once) and nothing is written."""
        try:
            with fenced(self.settings, self.fence) as connection:
                yield connection
        except StaleEpoch as refusal:
            reject(self.settings, self.fence, refusal)
            raise


def _cells(row: Row) -> tuple[str, ...]:
    return (
        row["service"],
        row["handler"] or "-",
        "every beat" if row["interval_s"] is None else f"every {row['interval_s']:g} s",
        str(row["ticks_at_epoch"]),
        row["last_tick_at"] or "-",
    )


CUSTOM = Section(
    key="custom_services",
    title="Custom services",
    columns=("service", "handler", "runs", "ticks (this epoch)", "last tick"),
    cells=_cells,
    label="service",
    gauges=(
        Gauge(
            "ticks_at_epoch",
            "failover_custom_service_ticks",
            "Fenced ticks of a custom service at its current epoch",
        ),
    ),
)

TICKS_SQL = (
    "SELECT t.tick_count, t.last_tick_at FROM service_status AS s "
    "JOIN service_tick AS t ON t.service_type = s.service_type AND t.epoch = s.epoch "
    "WHERE s.service_type = :service"
)


def load_spec(service: str, spec: str) -> Any:
    """`package.module:attribute`, imported; one-line `ConfigError` if it cannot be."""
    module_name, _, attribute = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise ConfigError(
            f"service {service}: handler {spec!r} cannot be imported: {reason}"
        ) from None


def _check_handler(service: str, spec: str, handler: Any) -> None:
    """A handler is a callable taking the fence as its one argument."""
    if not callable(handler):
        raise ConfigError(f"service {service}: handler {spec!r} is not callable")
    try:
        inspect.signature(handler).bind(object())
    except TypeError:
        raise ConfigError(
            f"service {service}: handler {spec!r} must take one argument (the fence)"
        ) from None
    except ValueError:
        return


class CustomService:
    """A team's service: its handler (or service object) run by the framework on the owner."""

    section: Section | None = CUSTOM

    def __init__(
        self, name: str, spec: str, interval: float | None, loader: Callable[[], Any]
    ) -> None:
        self.name = name
        self.spec = spec
        self.interval = interval
        self._loader = loader
        self._target: Any = None

    def target(self) -> Any:
        """The handler or service object, imported on first use."""
        if self._target is None:
            target = self._loader()
            if not isinstance(target, SingletonService):
                _check_handler(self.name, self.spec, target)
            self._target = target
        return self._target

    def _object(self) -> SingletonService | None:
        target = self.target()
        return target if isinstance(target, SingletonService) else None

    def configured(self, settings: Settings) -> bool:
        return True

    def check(self, settings: Settings) -> None:
        service = self._object()
        if service is not None:
            service.check(settings)

    def adopt(self, settings: Settings, fence: Fence) -> None:
        service = self._object()
        if service is not None:
            service.adopt(settings, fence)

    def work(self, settings: Settings, fence: Fence, send: Sender) -> Any:
        """Call the handler if its turn has come and it is not already running on this node."""
        incarnation = fence.me.incarnation
        kind = f"service.{self.name}"
        with local_state.alone(incarnation, kind) as alone:
            if not alone or not local_state.take_turn(incarnation, kind, self.interval):
                return None
            return self._call(settings, fence, send)

    def _call(self, settings: Settings, fence: Fence, send: Sender) -> Any:
        service = self._object()
        try:
            if service is not None:
                return service.work(settings, fence, send)
            return self.target()(ServiceFence.of(settings, fence))
        except StaleEpoch:
            raise
        except Exception as error:
            log.error(
                "node %s: service %s: handler %s failed: %s: %s",
                fence.me.name,
                self.name,
                self.spec,
                type(error).__name__,
                error,
                exc_info=True,
            )
            return f"failed: {type(error).__name__}"

    def status(self, connection: Connection, settings: Settings) -> list[Row]:
        ticks = connection.execute(text(TICKS_SQL), {"service": self.name}).first()
        last: datetime | None = ticks.last_tick_at if ticks else None
        return [
            {
                "service": self.name,
                "handler": self.spec,
                "interval_s": self.interval,
                "ticks_at_epoch": ticks.tick_count if ticks else 0,
                "last_tick_at": last.isoformat() if last else None,
            }
        ]
