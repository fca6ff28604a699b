"""The nemesis's faults, and a seeded schedule of them.

Each fault is a small frozen dataclass: `str(fault)` prints it readably (a schedule can be
read and repeated), and `apply(harness)` injects it, waits its time, heals it, and starts
again any node it killed or stopped, so at most one node is down at a time.

A target of `OWNER` means the owner of `folder_monitor` when the fault strikes; a kill of
the owner waits (a few seconds at most) for one of its runs to be in flight, so the kill
cuts work short.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, fields

from tests.nemesis.harness import LEASE, Harness
from tests.support.servers import redis_client

OWNER = "owner"


@dataclass(frozen=True)
class Fault:
    """A fault: its name, its parameters, and what it does to a cluster."""

    def __str__(self) -> str:
        values = " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))
        return f"{self.kind} {values}".strip()

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    def apply(self, harness: Harness) -> None:
        raise NotImplementedError


def resolve(harness: Harness, target: str) -> str:
    """The node a target names: `OWNER` is folder_monitor's owner now (or any live node)."""
    if target != OWNER:
        return target
    return harness.owner() or harness.live_names()[0]


def busy_owner(harness: Harness, target: str) -> str:
    """Resolve the target; for `OWNER`, wait a little for one of its runs to be in flight."""
    name = resolve(harness, target)
    if target == OWNER:
        harness.wait(lambda: harness.busy_on(name), 10, f"a run in flight on {name}")
    return name


@dataclass(frozen=True)
class Partition(Fault):
    """One node cut from the database, the broker or both: `silent` (nothing answers, held
    bytes come late when it heals) or `reset` (connections reset, new ones refused)."""

    node: str
    link: str
    mode: str
    seconds: float

    def apply(self, harness: Harness) -> None:
        link = harness.links[resolve(harness, self.node)]
        proxies = {"db": [link.database], "broker": [link.broker]}.get(
            self.link, [link.database, link.broker]
        )
        for proxy in proxies:
            proxy.hold() if self.mode == "silent" else proxy.cut()
        time.sleep(self.seconds)
        for proxy in proxies:
            proxy.release() if self.mode == "silent" else proxy.restore()


@dataclass(frozen=True)
class KillMain(Fault):
    """`kill -9` of the worker's main process alone: whatever it started may live on."""

    node: str

    def apply(self, harness: Harness) -> None:
        name = busy_owner(harness, self.node)
        running = harness.running(name)
        if running:
            os.kill(running.pid, signal.SIGKILL)
            running.popen.wait(timeout=10)
        harness.restart(name)


@dataclass(frozen=True)
class KillGroup(Fault):
    """`kill -9` of the node's whole process group (its own session's processes)."""

    node: str

    def apply(self, harness: Harness) -> None:
        name = busy_owner(harness, self.node)
        running = harness.running(name)
        if running:
            running.crash()
        harness.restart(name)


@dataclass(frozen=True)
class Pause(Fault):
    """SIGSTOP of the node's group for longer than a lease, then SIGCONT."""

    node: str
    seconds: float

    def apply(self, harness: Harness) -> None:
        running = harness.running(busy_owner(harness, self.node))
        if running:
            running.pause()
            time.sleep(self.seconds)
            running.resume()


@dataclass(frozen=True)
class Terminate(Fault):
    """SIGTERM (a graceful stop), then the node is started again."""

    node: str

    def apply(self, harness: Harness) -> None:
        name = busy_owner(harness, self.node)
        running = harness.running(name)
        if running:
            running.terminate(timeout=60)
        harness.restart(name)


@dataclass(frozen=True)
class Move(Fault):
    """`failover move SERVICE --to NODE` by hand (refused if NODE is not live: fine)."""

    service: str
    to: str

    def apply(self, harness: Harness) -> None:
        harness.cluster.cli("move", self.service, "--to", self.to, "--timeout", "10")


@dataclass(frozen=True)
class Drain(Fault):
    """`failover drain NODE`, some time drained, then `failover undrain NODE`."""

    node: str
    seconds: float

    def apply(self, harness: Harness) -> None:
        name = resolve(harness, self.node)
        harness.cluster.cli("drain", name, "--timeout", "60")
        time.sleep(self.seconds)
        harness.cluster.cli("undrain", name)


@dataclass(frozen=True)
class BrokerOutage(Fault):
    """Stand-in for a broker restart on a shared Redis: every node's broker link reset and
    refused, the test's Redis database flushed (a restart without persistence), restored."""

    seconds: float

    def apply(self, harness: Harness) -> None:
        for link in harness.links.values():
            link.broker.cut()
        redis_client(harness.broker_url).flushdb()
        time.sleep(self.seconds)
        for link in harness.links.values():
            link.broker.restore()


@dataclass(frozen=True)
class FlushDb(Fault):
    """Redis loses every message: FLUSHDB of the test's database (FLUSHALL would reach the
    other databases of a shared server)."""

    def apply(self, harness: Harness) -> None:
        redis_client(harness.broker_url).flushdb()


@dataclass(frozen=True)
class TerminateBackends(Fault):
    """Stand-in for a database restart (the harness does not own the server): every
    backend of the test database is terminated with pg_terminate_backend."""

    def apply(self, harness: Harness) -> None:
        harness.cluster.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@dataclass(frozen=True)
class ClockStep(Fault):
    """The node's wall clock stepped by `seconds` (through the test hook's offset file,
    FAILOVER_TEST_WALL_CLOCK_OFFSET_FILE), held, then set true again."""

    node: str
    seconds: float
    hold: float

    def apply(self, harness: Harness) -> None:
        clock = harness.links[resolve(harness, self.node)].clock
        clock.write_text(str(self.seconds))
        time.sleep(self.hold)
        clock.write_text("0")


NODE_NAMES = ("a", "b", "c")
SERVICES = ("folder_monitor", "app_script")


def a_node(rng: random.Random, owner_weight: float = 0.6) -> str:
    """The owner (most often: that is where the work is) or a node picked by name."""
    return OWNER if rng.random() < owner_weight else rng.choice(NODE_NAMES)


def lease_multiple(rng: random.Random) -> float:
    """A duration shorter or longer than a lease."""
    return round(LEASE * rng.choice((0.4, 0.7, 2.0, 3.5)), 2)


MAKERS = {
    "partition": lambda rng: Partition(
        a_node(rng), rng.choice(("db", "broker", "both")), rng.choice(("silent", "reset")),
        lease_multiple(rng),
    ),
    "killmain": lambda rng: KillMain(a_node(rng, 0.8)),
    "killgroup": lambda rng: KillGroup(a_node(rng)),
    "pause": lambda rng: Pause(a_node(rng), round(LEASE * rng.choice((1.5, 3.0)), 2)),
    "terminate": lambda rng: Terminate(a_node(rng)),
    "move": lambda rng: Move(rng.choice(SERVICES), rng.choice(NODE_NAMES)),
    "drain": lambda rng: Drain(a_node(rng), round(rng.uniform(1, 4), 1)),
    "brokeroutage": lambda rng: BrokerOutage(lease_multiple(rng)),
    "flushdb": lambda rng: FlushDb(),
    "terminatebackends": lambda rng: TerminateBackends(),
    "clockstep": lambda rng: ClockStep(a_node(rng), -30.0, round(rng.uniform(2, 6), 1)),
}  # fmt: skip
WEIGHTS = {
    "partition": 6, "killmain": 3, "killgroup": 2, "pause": 2, "terminate": 2, "move": 2,
    "drain": 1, "brokeroutage": 1, "flushdb": 1, "terminatebackends": 1, "clockstep": 1,
}  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One step of a schedule: wait `gap` seconds, then apply `fault`."""

    gap: float
    fault: Fault

    def __str__(self) -> str:
        return f"+{self.gap:.1f}s {self.fault}"


def schedule(seed: int, count: int, required: tuple[str, ...] = ()) -> list[Step]:
    """`count` faults drawn from `seed` (the `required` kinds among them), with gaps."""
    rng = random.Random(seed)
    kinds = list(required) + rng.choices(
        list(WEIGHTS), weights=list(WEIGHTS.values()), k=max(0, count - len(required))
    )
    rng.shuffle(kinds)
    return [Step(round(rng.uniform(0.5, 3.0), 1), MAKERS[kind](rng)) for kind in kinds]
