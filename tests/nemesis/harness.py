"""The nemesis's cluster: real `failover worker` nodes, each behind proxies of its own.

Every node reaches PostgreSQL and Redis through one `FaultProxy` each, so a fault can cut or
silence one node's link alone. Every node runs the same hot folder and script, whose handler
and script are `tests/nemesis/witness.py` (it logs to one history file); the harness logs
the faults to that same history, so the checker sees runs and faults on one monotonic clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.nemesis.stores import OwnStores
from tests.nemesis.witness import append
from tests.support.cluster import FAST_TIMING, Cluster
from tests.support.proxy import FaultProxy
from tests.support.servers import (
    broker_target,
    broker_url_via,
    database_target,
    database_url_via,
)
from workers.testing.local_cluster import LocalNode
from workers.testing.waiting import wait_until

WITNESS = Path(__file__).with_name("witness.py")
LEASE = float(FAST_TIMING["FAILOVER_LEASE_TIMEOUT"])
NODES = (("a", "r1"), ("b", "r1"), ("c", "r2"))


@dataclass(frozen=True)
class Workload:
    """How long each handler and script run lasts, how often files come and scripts fire."""

    handler_seconds: float = 4.0
    script_seconds: float = 3.0
    script_interval: float = 5.0
    file_every: float = 2.5
    batch_size: int = 2


@dataclass
class Link:
    """One node's own way to the stores, and its wall-clock offset file (the test hook)."""

    name: str
    region: str
    database: FaultProxy
    broker: FaultProxy
    clock: Path


@dataclass
class Feeder:
    """Writes files into the hot folder (`*.tmp`, then a rename) until stopped."""

    inbox: Path
    every: float
    names: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            name = f"f-{len(self.names):04}.dat"
            temporary = self.inbox / f"{name}.tmp"
            temporary.write_text(name)
            os.rename(temporary, self.inbox / name)
            self.names.append(name)

    def stop(self) -> None:
        self._stop.set()


class Harness:
    """Three nodes behind proxies, a hot folder fed with files, a script on an interval."""

    def __init__(
        self,
        folder: Path,
        database_url: str,
        broker_url: str,
        workload: Workload | None = None,
        stores: OwnStores | None = None,
    ) -> None:
        self.stores = stores
        self.folder = folder
        self.database_url = database_url
        self.broker_url = broker_url
        self.workload = workload or Workload()
        self.history = folder / "history.jsonl"
        self.locks = folder / "locks"
        self.locks.mkdir()
        self.inbox = folder / "inbox"
        self.inbox.mkdir()
        self.cluster = Cluster(folder, database_url, broker_url)
        self.links = {name: self._link(name, region) for name, region in NODES}
        self.feeder = Feeder(self.inbox, self.workload.file_every)
        self.notes: list[str] = []

    def _link(self, name: str, region: str) -> Link:
        clock = self.folder / f"clock-{name}"
        clock.write_text("0")
        return Link(
            name,
            region,
            FaultProxy(database_target(self.database_url)),
            FaultProxy(broker_target(self.broker_url)),
            clock,
        )

    def config(self, node: str) -> Path:
        """The node's TOML: the same for every node but for the node name the witness logs."""
        witness = [sys.executable, str(WITNESS), str(self.history), str(self.locks)]
        handler = [*witness, str(self.workload.handler_seconds), node, "handler", "{path}"]
        script = [*witness, str(self.workload.script_seconds), node, "script", "tick"]
        path = self.folder / f"failover-{node}.toml"
        path.write_text(
            f"folder_batch_size = {self.workload.batch_size}\n\n"
            "[[hot_folders]]\n"
            'name = "inbox"\n'
            f"path = {json.dumps(str(self.inbox))}\n"
            f"command = {json.dumps(handler)}\n"
            "settle_seconds = 0\nmax_attempts = 1000\nretry_backoff = 0.1\nhandler_timeout = 120\n\n"
            "[scripts.tick]\n"
            f"argv = {json.dumps(script)}\n"
            f"interval = {self.workload.script_interval}\ntimeout = 60\n"
        )
        return path

    def log(self, event: str, **fields: Any) -> None:
        """A harness event (a fault's start or end, a restart) in the shared history."""
        append(self.history, event=event, kind="nemesis", **fields)

    def start(self, name: str) -> LocalNode:
        """Start node `name` through its own proxies (it may take a while to go live)."""
        link = self.links[name]
        node = self.cluster.start(
            name,
            link.region,
            FAILOVER_DATABASE_URL=database_url_via(self.database_url, link.database.port),
            FAILOVER_BROKER_URL=broker_url_via(self.broker_url, link.broker.port),
            FAILOVER_CONFIG=str(self.config(name)),
            FAILOVER_TEST_WALL_CLOCK_OFFSET_FILE=str(link.clock),
        )
        self.log("node-start", node=name, node_pid=node.pid)
        return node

    def start_all(self) -> None:
        """Start every node, the first alone so it owns both services, and the feeder."""
        for number, name in enumerate(self.links):
            self.start(name)
            self.wait(lambda name=name: self.cluster.renewed_since_start(name), 60, f"{name} live")
            if number == 0:
                self.wait(
                    lambda name=name: self.cluster.owned_by(name), 30, f"{name} to own the services"
                )
        self.feeder.start()

    def wait(self, check: Any, timeout: float, what: str) -> bool:
        """Wait for `check`; on a timeout note it (a harness problem, not a violation)."""
        try:
            wait_until(check, timeout, what, every=0.2)
            return True
        except TimeoutError as error:
            self.notes.append(str(error))
            self.log("harness-timeout", what=what)
            return False

    def running(self, name: str) -> LocalNode | None:
        return self.cluster.running(name)

    def owner(self, service: str = "folder_monitor") -> str | None:
        with contextlib.suppress(Exception):
            return self.cluster.owners()[service][0]
        return None

    def live_names(self) -> list[str]:
        return [name for name in self.links if self.running(name)]

    def restart(self, name: str) -> None:
        """Start `name` again once its old incarnation's lease ran out (or it stopped)."""
        if self.running(name):
            return
        self.wait(lambda: not self.cluster.node_row(name).lease_fresh, 30, f"{name} to lapse")
        started = self.start(name)
        self.wait(
            lambda: not started.alive() or self.cluster.renewed_since_start(name),
            60,
            f"{name} to go live again",
        )

    def busy_on(self, node: str) -> bool:
        """Whether a witnessed run of `node` is in flight (started, not ended, alive)."""
        ended, started = set(), {}
        for event in read_history(self.history):
            if event.get("node") == node and event["event"] == "start":
                started[event["pid"]] = event
            elif event["event"] == "end":
                ended.add(event["pid"])
        return any(alive(pid) for pid in set(started) - ended)

    def heal(self) -> None:
        """End every fault: links open, clocks true, every node running and not draining."""
        for link in self.links.values():
            for proxy in (link.database, link.broker):
                proxy.release()
                if proxy.refusing:
                    proxy.restore()
            link.clock.write_text("0")
        for node in self.cluster.nodes:
            node.resume()
        for name in self.links:
            self.restart(name)
            self.cluster.cli("undrain", name)

    def settle(self, timeout: float = 240) -> None:
        """Stop the feeder, heal, and wait until every file is processed and no run is alive."""
        self.feeder.stop()
        time.sleep(self.workload.file_every)
        self.heal()
        self.log("settle")
        self.wait(self.all_processed, timeout, "every file to be processed")
        self.wait(lambda: not any(self.live_runs()), 60, "every witnessed run to end")

    def all_processed(self) -> bool:
        """Every file fed is in processed/ and the ledger has nothing open (after a
        promotion the ledger may have lost the rows of files already processed)."""
        done = {re.sub(r"\.\d+$", "", p.name) for p in (self.inbox / "processed").glob("*")}
        rows = self.cluster.query(
            "SELECT count(*) AS open FROM folder_file "
            "WHERE state IN ('seen', 'claimed', 'processing')"
        )
        return set(self.feeder.names) <= done and rows[0].open == 0

    def live_runs(self) -> list[int]:
        """Pids of witnessed runs still alive (their `sleep` children included)."""
        pids = set()
        for event in read_history(self.history):
            pids.add(event["pid"])
            if "child" in event:
                pids.add(event["child"])
        return [pid for pid in pids if pid != os.getpid() and alive(pid)]

    def close(self) -> None:
        """Kill every node and every witnessed run still alive; close the proxies."""
        self.feeder.stop()
        for link in self.links.values():
            link.database.release()
            link.broker.release()
        self.cluster.close()
        for pid in self.live_runs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for link in self.links.values():
            link.database.close()
            link.broker.close()


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every event of the history, in the order written (a torn last line is skipped)."""
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


def alive(pid: int) -> bool:
    """Whether a process still runs (a zombie has finished running)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
