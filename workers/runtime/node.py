"""A node's life inside its Celery worker: birth, embedded beat, graceful death.

`NodeLifecycle` is a worker bootstep, so `failover worker` and a plain
`celery -A workers worker -Q node.N` behave alike:

- register_birth: register the node under a new incarnation (refused while another live
  process holds the name), then start the node's own beat as a thread of this process;
- a graceful stop (SIGTERM or SIGINT, `GracefulStop`): the node starts nothing new, lets
  what runs finish (at most `handover_grace`; a second signal cuts it), then Celery's warm
  shutdown runs register_death: release every service the node owns (reason `release`)
  and nudge the live peers to beat, so one takes over without waiting for this node's
  lease to expire.

The beat is a thread of the worker's main process, not a child process: it cannot outlive
the node it beats for (a SIGKILL of the worker takes it along), and no second process per
node needs supervising. Nor can the node outlive its beat: a beat that ends while the worker
is not stopping (an exception) releases the node's services and stops the worker with exit
code 1, so that systemd restarts it; meanwhile the node refuses heartbeats, takeovers and
moves (`beat_stopped`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from functools import partial
from typing import Any

from celery import bootsteps, platforms
from celery.signals import (
    after_setup_logger,
    task_received,
    task_revoked,
    worker_process_init,
    worker_shutdown,
    worker_shutting_down,
)

from workers import services
from workers.decision.decide import FIRST_CANDIDATES
from workers.decision.placement import Placement, candidates
from workers.decision.snapshot import Node, Snapshot
from workers.errors import FailoverError
from workers.fence import local_fence, local_state, supervision
from workers.queues import joining
from workers.queues.routing import (
    HEARTBEAT,
    SERVICE_WORK,
    SHARED_QUEUE,
    node_from_queue,
    node_queue,
    send_to_node,
)
from workers.runtime import logs
from workers.settings import Settings, timing
from workers.settings.process import (
    INCARNATION_VAR,
    NODE_VAR,
    Identity,
    adopt_node,
    current_identity,
    current_settings,
)
from workers.stores import ownership, registration, store
from workers.stores.database import (
    close_idle_connections,
    connect_ahead,
    forget_inherited_engines,
    transaction,
)
from workers.stores.registration import Registration

log = logging.getLogger(__name__)


def declared(settings: Settings) -> Registration:
    name, region = settings.require_node()
    return Registration(
        name=name,
        region=region,
        lease_timeout=settings.node_lease_timeout(),
        heartbeat_interval=settings.heartbeat_interval,
        ip_address=settings.ip_address,
        port_number=settings.port_number,
        app_context=settings.app_context,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        retention_days=settings.node_retention_days,
    )


def register_birth(settings: Settings, me: Identity) -> None:
    """Register this incarnation as joining and give each declared service its row, in one
    round trip; keep its name held while its consumer starts (it is live only from its
    first heartbeat through that consumer: `workers.queues.joining`); then hold connections only
    where heartbeats will run."""
    names = list(services.services_for(settings))
    registration.register(settings, declared(settings), me.incarnation, names)
    joining.begin()
    joining.JoinHold(settings, me).start()
    if settings.pool == "prefork":
        close_idle_connections()
    else:
        connect_ahead(settings)
    log.info(
        "registered in region %s, incarnation %s; joining: not live until its "
        "first heartbeat through its consumer",
        settings.region,
        me.incarnation,
    )
    log.info("settings %s", settings.describe())


def register_death(app: Any, settings: Settings, me: Identity) -> None:
    """Release this node's services and wake the peers placed first to take them at once
    (the history counts the runs the release cuts)."""
    with transaction(settings) as connection:
        released = ownership.release_services(
            connection, me, running=partial(services.running_work, settings)
        )
        snapshot = store.read_snapshot(connection)
    local_fence.released(me.incarnation, dict(released))
    for service, epoch in released:
        log.info("released %s at epoch %d: graceful stop", service, epoch)
    if not released:
        log.info("stopped; it owned no service")
        return
    policy = settings.policy()
    nudged = {
        peer
        for service, _epoch in released
        for peer in first_candidates(snapshot, service, policy.placement(service))
    }
    for peer in nudged:
        args = (peer.name, peer.incarnation)
        deadline = snapshot.now.timestamp() + timing.nudge_deadline(settings)
        send_to_node(app, HEARTBEAT, peer.name, args, deadline=deadline)


def first_candidates(snapshot: Snapshot, service: str, placement: Placement) -> list[Node]:
    """The live peers that would take a released service first (its home region's first)."""
    released = snapshot.service(service)
    home = released.home_region if released else None
    return candidates(snapshot, placement, home, set())[:FIRST_CANDIDATES]


def _node_of_worker(worker: Any) -> str | None:
    """The node a worker serves: `FAILOVER_NODE_NAME`, or its single `node.<name>` queue."""
    configured = os.environ.get(NODE_VAR)
    if configured:
        return configured
    names = {node_from_queue(q) for q in worker.app.amqp.queues.consume_from or {}} - {None}
    return names.pop() if len(names) == 1 else None


class NodeLifecycle(bootsteps.StartStopStep):  # type: ignore[misc]
    """Registers the node, runs its beat, and releases its services on warm shutdown."""

    label = "failover node"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        name = _node_of_worker(worker)
        self.enabled = name is not None
        self.beat: Any = None
        if name is None:
            log.warning("no node: set %s or consume one node.<name> queue", NODE_VAR)
            return
        me = adopt_node(name, os.environ.get(INCARNATION_VAR))
        supervision.watch_node_process(os.getpid())
        queues = worker.app.amqp.queues
        wanted = [node_queue(me.name)]
        if current_settings().folder_dispatch == "shared":
            wanted.append(SHARED_QUEUE)
        for queue in wanted:
            if queue not in (queues.consume_from or {}):
                queues.select_add(queue)

    def start(self, worker: Any) -> None:
        settings, me = current_settings(), current_identity()
        try:
            register_birth(settings, me)
        except FailoverError as error:
            log.critical("cannot start: %s", error)
            raise SystemExit(error.exit_code) from None
        _running.append((worker.app, settings, me))
        self.beat = NodeBeat(worker.app)
        self.beat.start()
        GracefulStop(settings, me).install()

    def stop(self, worker: Any) -> None:
        if self.beat is not None:
            self.beat.stop()
            self.beat = None


_running: list[tuple[Any, Settings, Identity]] = []
BEAT_STOPPED = "beat_stopped"
EXIT_BEAT_LOST = 1


class NodeBeat(threading.Thread):
    """The node's beat, as a thread of the worker's main process (Celery's embedded beat,
    with the node's scheduler); if it ends before `stop`, the node goes down with it."""

    def __init__(self, app: Any) -> None:
        from celery.beat import Service

        from beat_schedule.scheduler import NodeScheduler

        super().__init__(name="Beat", daemon=True)
        self.app = app
        self.service = Service(
            app, max_interval=1, scheduler_cls=NodeScheduler, remote_control=False
        )
        self.stopping = False

    def run(self) -> None:
        self.app.set_current()
        why = "it returned"
        try:
            self.service.start()
        except BaseException as error:
            why = f"{type(error).__name__}: {error}"
        if not self.stopping:
            beat_lost(why)

    def stop(self) -> None:
        self.stopping = True
        self.service.stop(wait=True)


def beat_lost(why: str) -> None:
    """The beat died: nothing renews the lease any more. Refuse work that needs one, release
    the services at once, and stop the worker with a failure code (systemd restarts it)."""
    from celery.worker import state

    me = current_identity()
    log.critical(
        "its beat stopped (%s): releasing its services and exiting with code %d, to be restarted",
        why,
        EXIT_BEAT_LOST,
    )
    local_state.remember(me.incarnation, BEAT_STOPPED, 1.0)
    _release_on_shutdown()
    state.should_stop = EXIT_BEAT_LOST


STOPPING = "stopping"


def stopping(incarnation: str) -> bool:
    """Whether this incarnation is stopping gracefully: it takes nothing on any more."""
    return local_state.recall(incarnation, STOPPING) is not None


class GracefulStop:
    """A first SIGTERM (or SIGINT) lets the node's running work finish before it releases
    its services: each is marked as handing over (nothing new starts), and Celery's warm
    shutdown begins once nothing runs or `handover_grace` has passed. A second signal cuts
    what still runs at once."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, settings: Settings, me: Identity) -> None:
        self.settings = settings
        self.me = me
        self.celery_handlers = {name: platforms.signals[name] for name in self.SIGNALS}
        self.thread: threading.Thread | None = None

    def install(self) -> None:
        for name in self.SIGNALS:
            platforms.signals[name] = self.on_signal

    def on_signal(self, signum: int, frame: Any = None) -> None:
        name = signal.Signals(signum).name
        if self.thread is not None:
            log.warning("%s again: cutting what still runs", name)
            self.celery_handlers[name](signum, frame)
            return
        self.thread = threading.Thread(
            target=self._stop, args=(name, signum), name="GracefulStop", daemon=True
        )
        self.thread.start()

    def _stop(self, name: str, signum: int) -> None:
        local_state.remember(self.me.incarnation, STOPPING, time.monotonic())
        try:
            self._let_work_finish(name)
        except FailoverError as error:
            log.error("stopping without waiting: %s", error)
        finally:
            self.celery_handlers[name](signum, None)

    def _let_work_finish(self, name: str) -> None:
        """Mark the services as handing over, then wait until nothing runs or the grace ends."""
        settings, me = self.settings, self.me
        grace = settings.handover_grace
        with transaction(settings) as connection:
            found = ownership.begin_stop(
                connection, me, grace, partial(services.running_work, settings)
            )
        if not found:
            return
        log.info(
            "%s: stopping once its running work ended (%s; at most %g s; a second %s cuts it)",
            name,
            _describe_running(found),
            grace,
            name,
        )
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            left = self._still_running(list(found))
            if not left:
                log.info("its running work ended: releasing its services")
                return
            time.sleep(STOP_POLL)
        log.warning(
            "the %g s grace ended with %s still running: cutting it",
            grace,
            _describe_running(self._still_running(list(found))),
        )

    def _still_running(self, owned: list[str]) -> dict[str, list[str] | None]:
        """Per service, what still runs of it (from the database and this host)."""
        incarnation = self.me.incarnation
        with transaction(self.settings) as connection:
            found = {
                service: services.running_here(self.settings, incarnation, service)(connection)
                for service in owned
            }
        return {service: left for service, left in found.items() if left}


STOP_POLL = 0.1


def _describe_running(found: dict[str, list[str] | None]) -> str:
    """`folder_monitor: 2 (inbox/a.dat, ...)`-style summary of what still runs."""
    parts = []
    for service, left in sorted(found.items()):
        if left is None:
            parts.append(f"{service}: its current run")
        elif left:
            shown = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
            parts.append(f"{service}: {len(left)} ({shown})")
    return "; ".join(parts) or "nothing"


def beat_stopped(incarnation: str) -> bool:
    """Whether this incarnation's beat died: it is exiting and must take nothing on."""
    return local_state.recall(incarnation, BEAT_STOPPED) is not None


def _release_on_shutdown(**_: Any) -> None:
    while _running:
        app, settings, me = _running.pop()
        try:
            register_death(app, settings, me)
        except FailoverError as error:
            log.error("could not release its services: %s", error)


def _forget_local_state(**_: Any) -> None:
    """The worker is done (its tasks finished or were killed): drop the host's shared state."""
    incarnation = os.environ.get(INCARNATION_VAR)
    if incarnation:
        local_state.forget(incarnation)


def _off_the_queue(name: str) -> None:
    """A heartbeat or service-work message left the node's queue: the next may be sent."""
    incarnation = os.environ.get(INCARNATION_VAR)
    if incarnation and name in (HEARTBEAT, SERVICE_WORK):
        local_state.taken(incarnation, name)


def _received(request: Any = None, **_: Any) -> None:
    _off_the_queue(getattr(request, "name", ""))


def _dropped(sender: Any = None, **_: Any) -> None:
    _off_the_queue(getattr(sender, "name", ""))


def _fresh_engines_in_child(**_: Any) -> None:
    forget_inherited_engines()
    with contextlib.suppress(FailoverError):
        connect_ahead(current_settings())


def install(app: Any) -> None:
    """Add the node's bootstep to a Celery app's worker."""
    app.steps["worker"].add(NodeLifecycle)
    worker_shutting_down.connect(_release_on_shutdown, weak=False)
    worker_shutdown.connect(_forget_local_state, weak=False)
    worker_process_init.connect(_fresh_engines_in_child, weak=False)
    task_received.connect(_received, weak=False)
    task_revoked.connect(_dropped, weak=False)
    after_setup_logger.connect(logs.quiet_routine_logs, weak=False)
    logs.name_the_node()
