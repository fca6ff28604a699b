"""A team's own singleton service: a handler declared in the TOML file (`[services.<name>]`)
or a Python entry point (group `celery_failover.services`).

On its owner, at most once per `interval` (every service work when unset) and never twice
at once on a node, the handler is called as `handler(fence)`. `fence.transaction()` is a
transaction open only while this node owns the service at `fence.epoch`: what the handler
writes there commits under the epoch or not at all. An entry point may instead name an
object implementing `SingletonService`, which is then called like a built-in.

A handler does not run inside the service work: its turn is a `failover.custom_run` task on
the owner's own queue, which runs it in a child process of its own (a process group, with
its own database connections), killed at its `timeout` or as soon as the node may no longer
act for the service (`local_fence.lost`). Python code in a thread cannot be stopped; a
process can. So a hung handler costs its own runs, never the scans and scripts beside it,
and a turn that comes while the previous run still goes is skipped, with a warning.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from workers.errors import ConfigError, StaleEpoch
from workers.fence import local_fence, local_state
from workers.fence.fencing import Fence, fenced, reject
from workers.fence.supervision import Ending, Forked, Watch, die_with_parent, guarded, supervise
from workers.queues.routing import CUSTOM_RUN
from workers.services.base import Gauge, Row, RunningWork, Section, Sender, SingletonService
from workers.settings import DEFAULT_SERVICE_TIMEOUT, Settings, timing
from workers.stores.database import forget_inherited_engines

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
        self,
        name: str,
        spec: str,
        interval: float | None,
        loader: Callable[[], Any],
        timeout: float = DEFAULT_SERVICE_TIMEOUT,
    ) -> None:
        self.name = name
        self.spec = spec
        self.interval = interval
        self.timeout = timeout
        self.kind = f"service.{name}"
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
        """In the service work: a service object works here, like a built-in; a handler's
        turn is sent to this node's own queue (`failover.custom_run`), to run beside it."""
        if self._object() is not None:
            return self._work_inline(settings, fence, send)
        return self._send_turn(settings, fence, send)

    def _work_inline(self, settings: Settings, fence: Fence, send: Sender) -> Any:
        """A service object's work, at its turn, never twice at once on a node."""
        service = self._object()
        incarnation = fence.me.incarnation
        with local_state.alone(incarnation, self.kind) as alone:
            if service is None or not alone:
                return None
            if not local_state.take_turn(incarnation, self.kind, self.interval):
                return None
            try:
                return service.work(settings, fence, send)
            except StaleEpoch:
                raise
            except Exception as error:
                self._log_failure(fence, error)
                return f"failed: {type(error).__name__}"

    def _send_turn(self, settings: Settings, fence: Fence, send: Sender) -> str | None:
        """Send the handler's run when its turn has come, unless one waits in the queue;
        a turn that finds the previous run still going is skipped (and said once per run)."""
        incarnation = fence.me.incarnation
        waiting = local_state.waiting_for(incarnation, self.kind)
        if waiting is not None and waiting < timing.waiting_max_age(settings.heartbeat_interval):
            return None
        if not local_state.take_turn(incarnation, self.kind, self.interval):
            return None
        with local_state.alone(incarnation, self.kind) as free:
            if not free:
                self._say_skipped(fence)
                return "skipped: the previous run still runs"
        local_state.mark_waiting(incarnation, self.kind)
        send.to_node(CUSTOM_RUN, (self.name, fence.epoch), settings.heartbeat_interval)
        return "sent"

    def _say_skipped(self, fence: Fence) -> None:
        """Warn, once per run, that a turn of the handler was skipped because it still runs."""
        incarnation = fence.me.incarnation
        started = local_state.recall(incarnation, f"{self.kind}.run_started")
        if started is None or local_state.recall(incarnation, f"{self.kind}.skip_said") == started:
            return
        local_state.remember(incarnation, f"{self.kind}.skip_said", started)
        log.warning(
            "service %s: skipped a run: the previous one (handler %s, started %.1f s "
            "ago) still runs; it is cut at its %g s timeout",
            self.name,
            self.spec,
            time.monotonic() - started,
            self.timeout,
        )

    def run(self, settings: Settings, fence: Fence) -> str:
        """In `failover.custom_run`: the handler in a child process, cut at its timeout or
        when the node may no longer act for the service; returns how the run ended."""
        incarnation = fence.me.incarnation
        local_state.taken(incarnation, self.kind)
        with local_state.alone(incarnation, self.kind) as free:
            if not free:
                return "skipped: the previous run still runs"
            lost = local_fence.lost(fence)
            if lost:
                return f"not started: {lost}"
            if local_fence.handing_over(incarnation, self.name):
                return "not started: the service is handing over"
            local_state.remember(incarnation, f"{self.kind}.run_started", time.monotonic())
            ending = self._run_child(settings, fence)
        return _verdict(ending)

    def _run_child(self, settings: Settings, fence: Fence) -> Ending:
        """The handler in a child below a guard (`supervision.guarded`): cut at its timeout,
        when the fence is lost, or when the node's worker dies."""
        deadline = time.monotonic() + self.timeout
        what = f"the handler {self.spec} of service {self.name} (timeout {self.timeout:g} s)"

        def in_guard(watch: Watch) -> dict[str, object]:
            guard = os.getpid()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child process
                code = 70
                try:
                    die_with_parent(guard)
                    forget_inherited_engines()
                    code = self._call_handler(settings, fence)
                finally:
                    os._exit(code)
            return asdict(supervise(Forked(pid), what, fence, lambda: deadline, watch=watch))

        result = guarded(in_guard, what)
        return Ending(**result) if result else Ending(None, "its guard process died")

    def _call_handler(self, settings: Settings, fence: Fence) -> int:
        """The handler's call, in the child: its exit code (a refused write is already logged
        and counted by the fence; a failure is logged here)."""
        try:
            self.target()(ServiceFence.of(settings, fence))
        except StaleEpoch:
            return 3
        except Exception as error:
            self._log_failure(fence, error)
            return 1
        return 0

    def _log_failure(self, fence: Fence, error: Exception) -> None:
        log.error(
            "service %s: handler %s failed: %s: %s",
            self.name,
            self.spec,
            type(error).__name__,
            error,
            exc_info=True,
        )

    def in_flight(self, connection: Connection, settings: Settings) -> list[str] | None:
        """A service object may say; a handler's runs are known only to its owner."""
        service = self._object()
        if isinstance(service, RunningWork):
            return service.in_flight(connection, settings)
        return None

    def busy_here(self, settings: Settings, incarnation: str) -> bool:
        """A run of the handler (or the object's work) is going on this host now."""
        service = self._object()
        if isinstance(service, RunningWork) and service.busy_here(settings, incarnation):
            return True
        with local_state.alone(incarnation, self.kind) as free:
            return not free

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


def _verdict(ending: Ending) -> str:
    """How a handler's run ended, in a word or a reason."""
    if ending.timed_out:
        return "cut at its timeout"
    if ending.killed_for:
        return f"cut: {ending.killed_for}"
    return {0: "done", 1: "failed", 3: "refused"}.get(ending.code or 0, f"exit {ending.code}")
