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
class BrokerRestart(Fault):
    """The broker restarts without persistence: every message is lost, every connection
    reset. On the nemesis's own Redis, the real thing; on a shared server, a stand-in (every
    node's broker link reset and refused, the test's database flushed)."""

    seconds: float

    def apply(self, harness: Harness) -> None:
        if harness.stores is not None:
            harness.stores.restart_broker(self.seconds)
            return
        for link in harness.links.values():
            link.broker.cut()
        redis_client(harness.broker_url).flushdb()
        time.sleep(self.seconds)
        for link in harness.links.values():
            link.broker.restore()


@dataclass(frozen=True)
class FlushAll(Fault):
    """Redis loses every message: FLUSHALL of the nemesis's own server (FLUSHDB of the
    test's database on a shared one, whose other databases are not ours)."""

    def apply(self, harness: Harness) -> None:
        if harness.stores is not None:
            harness.stores.flushall()
        else:
            redis_client(harness.broker_url).flushdb()


@dataclass(frozen=True)
class DbRestart(Fault):
    """The database restarts: the nemesis's own primary stopped (fast) and started again
    after a second; on a shared server, a stand-in (every backend of the test database
    terminated)."""

    def apply(self, harness: Harness) -> None:
        if harness.stores is not None:
            harness.stores.restart_database(1.0)
            return
        harness.cluster.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@dataclass(frozen=True)
class Promotion(Fault):
    """An asynchronous standby, held back for a second of writes, is promoted after the
    primary crashes: the last writes are lost (only with the nemesis's own stores)."""

    def apply(self, harness: Harness) -> None:
        if harness.stores is None:
            harness.notes.append("promotion skipped: the nemesis does not own the database")
            return
        harness.stores.promote_without_last_writes(1.0)


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
    "brokerrestart": lambda rng: BrokerRestart(lease_multiple(rng)),
    "flushall": lambda rng: FlushAll(),
    "dbrestart": lambda rng: DbRestart(),
    "clockstep": lambda rng: ClockStep(a_node(rng), -30.0, round(rng.uniform(2, 6), 1)),
    "promotion": lambda rng: Promotion(),
}  # fmt: skip
WEIGHTS = {
    "partition": 6, "killmain": 3, "killgroup": 2, "pause": 2, "terminate": 2, "move": 2,
    "drain": 1, "brokerrestart": 1, "flushall": 1, "dbrestart": 1, "clockstep": 1,
}  # fmt: skip
"""How often each kind is drawn. `promotion` is not drawn: a run with the nemesis's own
stores requires one (`OWN_STORES_REQUIRED`), so that the other kinds' draws stay put."""
OWN_STORES_REQUIRED = ("promotion",)


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
