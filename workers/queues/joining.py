"""How a node joins: registered as joining, live only from its first renewal through its
own Celery consumer.

A node registers before its consumer starts (so that a second process under its name is
refused before it could take a message off the node's queue). But a consumer far from
Redis takes seconds to start, and a registration that counted as a renewal made the node
look live, then lapse, then come back (issue 17). So:

- the registration makes the incarnation *joining*: it holds its name (`joining_until`),
  owns, claims and judges nothing, and its peers do not count it as live or as a candidate;
- while it joins, `JoinHold` pushes that hold a lease further every heartbeat interval (a
  joining process that dies frees its name within a lease, like a live one);
- `ConsumerReady`, a step of the consumer, says when the consumer consumes; the node's beat
  sends no heartbeat before that, and sends one at once when it happens;
- that heartbeat, consumed through the consumer, renews the lease for the first time: the
  database clears `joining_until` and the node is live, its judging window starting then.

After a broker reconnect the beat does not wait for the consumer: its publishes fail and
are tried again 0.2 s later until the broker (or a promoted Sentinel master) takes them,
which is what moves its own connection over; the node stays live on its lease meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from workers.errors import FailoverError
from workers.settings import Settings
from workers.settings.process import Identity
from workers.stores import registration
from workers.stores.database import close_idle_connections

log = logging.getLogger(__name__)

_node = threading.Event()
_consuming = threading.Event()


def begin() -> None:
    """This process registered a node: its beat waits for the consumer from now on."""
    _node.set()


def waiting_for_consumer() -> bool:
    """Whether this process's node cannot consume yet: its consumer is starting. A heartbeat
    sent now could not renew the lease before the consumer is up. False in a process that
    runs no node."""
    return _node.is_set() and not _consuming.is_set()


class ConsumerReady(bootsteps.StartStopStep):  # type: ignore[misc]
    """The last step of the consumer before its event loop: the consumer now consumes.

    Only the first start counts: after a lost broker connection the beat keeps publishing
    (a failed publish is tried again 0.2 s later, which is also what moves its connection
    to a promoted Sentinel master), and the node stays live on its lease meanwhile."""

    label = "failover consumer ready"
    requires = (
        "celery.worker.consumer.tasks:Tasks",
        "celery.worker.consumer.control:Control",
        "celery.worker.consumer.heart:Heart",
    )

    def start(self, consumer: Any) -> None:
        _consuming.set()


def install(app: Any) -> None:
    """Add `ConsumerReady` after every step of the consumer that the worker starts with."""
    app.steps["consumer"].add(ConsumerReady)


class JoinHold(threading.Thread):
    """Keeps a joining incarnation's hold on its name while its consumer starts: a statement
    (one round trip) every heartbeat interval, until the node joined, stopped or was
    replaced. It never renews the lease: only a heartbeat through the consumer does."""

    def __init__(self, settings: Settings, me: Identity) -> None:
        super().__init__(name="failover-join-hold", daemon=True)
        self.settings, self.me = settings, me
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self._hold()
        finally:
            if self.settings.pool == "prefork":
                close_idle_connections()

    def _hold(self) -> None:
        """Until the node joined: on prefork, the main process then keeps no connection (its
        pool processes do the work)."""
        while not self.stopping.wait(self.settings.heartbeat_interval):
            try:
                if not registration.hold_while_joining(self.settings, self.me):
                    return
            except FailoverError as error:
                log.warning("could not hold its name while joining: %s", error)

    def stop(self) -> None:
        self.stopping.set()
