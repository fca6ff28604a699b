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

After a broker reconnect (the consumer restarts) the beat waits for the consumer again and
beats at once when it is back, so the lease is renewed as soon as it can be.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from workers import store
from workers.errors import FailoverError
from workers.settings import Settings
from workers.store import Identity

log = logging.getLogger(__name__)

_node = threading.Event()
_consuming = threading.Event()


def begin() -> None:
    """This process registered a node: its beat waits for the consumer from now on."""
    _node.set()


def waiting_for_consumer() -> bool:
    """Whether this process's node cannot consume right now: its consumer is starting, or
    restarting after a lost broker connection. A heartbeat sent now could not renew the
    lease before the consumer is back. False in a process that runs no node."""
    return _node.is_set() and not _consuming.is_set()


class ConsumerReady(bootsteps.StartStopStep):  # type: ignore[misc]
    """The last step of the consumer before its event loop: the consumer now consumes.

    Celery restarts the consumer's steps after a lost broker connection: `stop` (or
    `shutdown`) says the consumer is gone until `start` says it is back."""

    label = "failover consumer ready"
    requires = (
        "celery.worker.consumer.tasks:Tasks",
        "celery.worker.consumer.control:Control",
        "celery.worker.consumer.heart:Heart",
    )

    def start(self, consumer: Any) -> None:
        _consuming.set()

    def stop(self, consumer: Any) -> None:
        _consuming.clear()

    def shutdown(self, consumer: Any) -> None:
        _consuming.clear()


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
        while not self.stopping.wait(self.settings.heartbeat_interval):
            try:
                if not store.hold_while_joining(self.settings, self.me):
                    return
            except FailoverError as error:
                log.warning(
                    "node %s: could not hold its name while joining: %s", self.me.name, error
                )

    def stop(self) -> None:
        self.stopping.set()
