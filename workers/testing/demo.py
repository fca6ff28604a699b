"""`failover demo`: a real three-node cluster on this machine, and a failover to watch.

Embedded PostgreSQL and Redis (or the servers named by FAILOVER_DATABASE_URL and
FAILOVER_BROKER_URL), three real `failover worker` processes in two regions, then a script:
kill the owner of folder_monitor, show the takeover and its time, restart the node as a
standby, move the service back by hand, and sum up. Everything it started is stopped at the
end or on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.prompt import Prompt
from rich.text import Text

from workers.errors import Refused
from workers.services import app_script, folder_monitor
from workers.settings import load_settings
from workers.testing.local_cluster import LocalCluster

NODES = (("a", "eu-west"), ("b", "eu-west"), ("c", "us-east"))
SERVICE = "folder_monitor"
DEMO_TIMING = {
    "FAILOVER_HEARTBEAT_INTERVAL": "0.5",
    "FAILOVER_LEASE_TIMEOUT": "1.5",
    "FAILOVER_DATABASE_TIMEOUT": "0.25",
    "FAILOVER_CROSS_REGION_DELAY": "0.5",
    "FAILOVER_LOG_LEVEL": "INFO",
}


@dataclass
class Story:
    """What happened, line by line, and the measured times."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


@contextmanager
def servers(folder: Path) -> Iterator[tuple[str, str, str]]:
    """The database and broker URLs (the environment's, else embedded ones) and a label."""
    database_url = os.environ.get("FAILOVER_DATABASE_URL")
    broker_url = os.environ.get("FAILOVER_BROKER_URL")
    if database_url and broker_url:
        yield database_url, broker_url, "the servers in FAILOVER_DATABASE_URL / FAILOVER_BROKER_URL"
        return
    from workers.testing.embedded import embedded_servers

    with embedded_servers(folder / "servers") as embedded:
        yield embedded.database_url, embedded.broker_url, "embedded PostgreSQL and Redis"


class Demo:
    def __init__(self, console: Console, headless: bool, duration: float) -> None:
        self.console = console
        self.headless = headless
        self.duration = duration
        self.story = Story()
        self.cluster: LocalCluster | None = None
        self.live: Live | None = None
        self.inbox = Path()

    def run(self) -> Story:
        folder = Path(tempfile.mkdtemp(prefix="failover-demo-"))
        started = time.monotonic()
        try:
            with ExitStack() as stack:
                database_url, broker_url, label = stack.enter_context(servers(folder))
                self._prepare(folder, database_url, broker_url)
                self.story.add(f"servers: {label}")
                if not self.headless:
                    self.live = stack.enter_context(
                        Live(self._view(), console=self.console, refresh_per_second=4)
                    )
                producer = FileProducer(self.inbox)
                producer.start()
                try:
                    self._script()
                    self._refresh()
                    self._watch(max(0.0, self.duration - (time.monotonic() - started)))
                finally:
                    producer.stop()
                self._account_for_files(producer.dropped)
        finally:
            if self.cluster is not None:
                self.cluster.close()
            left = [n.name for n in (self.cluster.nodes if self.cluster else []) if n.alive()]
            self.story.add(f"processes left running: {', '.join(left) or 'none'}")
            shutil.rmtree(folder, ignore_errors=True)
        return self.story

    def _prepare(self, folder: Path, database_url: str, broker_url: str) -> None:
        from workers.settings.process import current_settings
        from workers.stores.database import upgrade_schema

        config = write_demo_config(folder)
        self.inbox = folder / "inbox"
        os.environ.update(
            FAILOVER_DATABASE_URL=database_url,
            FAILOVER_BROKER_URL=broker_url,
            FAILOVER_CONFIG=str(config),
        )
        current_settings.cache_clear()
        upgrade_schema(load_settings(database_url=database_url))
        env = {**DEMO_TIMING, "FAILOVER_CONFIG": str(config)}
        self.cluster = LocalCluster(folder, database_url, broker_url, env)

    # -- the script ---------------------------------------------------------------------
    def _script(self) -> None:
        cluster = self._cluster()
        for name, region in NODES:
            self._step(f"starting node {name} in {region}")
            cluster.start_live(name, region)
        first, epoch = self._wait(self._owned, 30, "a first owner")
        self.story.add(
            f"start: {first} claimed {SERVICE} at epoch {epoch} (first come, first served)"
        )
        victim = self._choose_victim(first)
        took, new_epoch, seconds = self._kill(victim, epoch)
        self.story.add(
            f"unplanned failover: killed {victim} (SIGKILL); {took} took {SERVICE} "
            f"at epoch {new_epoch} in {seconds:.2f} s"
        )
        region = dict(NODES)[victim]
        self._step(f"restarting {victim}: it comes back as a standby")
        self._wait(
            lambda: not cluster.node_row(victim).lease_fresh, 30, f"{victim}'s lease to lapse"
        )
        cluster.start_live(victim, region)
        time.sleep(2.0)
        owner, _epoch = self._owner()
        self.story.add(f"restart: {victim} came back as a standby ({owner} still owns {SERVICE})")
        self._move_back(victim)

    def _account_for_files(self, dropped: int) -> None:
        """Let the last files through, then check that each was processed exactly once."""
        processed = self.inbox / "processed"

        def done() -> bool:
            return processed.is_dir() and len(list(processed.iterdir())) >= dropped

        self._wait(done, 60, "the last files to be processed")
        with self._cluster().engine.connect() as connection:
            files, names = folder_monitor.processed_files(connection)
            runs = app_script.run_count(connection)
        self.story.add(
            f"files: {dropped} dropped in the hot folder, {len(list(processed.iterdir()))} "
            f"processed, {files - names} twice; {runs} script runs"
        )

    def _choose_victim(self, owner: str) -> str:
        if self.headless or not sys.stdin.isatty():
            return owner
        self._pause_live()
        names = [name for name, _region in NODES]
        choice = Prompt.ask(
            f"Kill which node? ({SERVICE} is on [bold]{escape(owner)}[/])",
            choices=names,
            default=owner,
        )
        self._resume_live()
        return choice

    def _kill(self, victim: str, epoch: int) -> tuple[str, int, float]:
        cluster = self._cluster()
        node = cluster.running(victim)
        assert node is not None
        self._step(f"killing {victim} with SIGKILL")
        before = self._owner()
        started = time.monotonic()
        node.crash()
        if before[0] != victim:
            return before[0] or "nobody", before[1], 0.0
        owner, new_epoch = self._wait(lambda: self._owned(victim), 60, "a takeover")
        return owner, new_epoch, time.monotonic() - started

    def _move_back(self, target: str) -> None:
        from workers.operations.maintenance import move
        from workers.runtime.app import app
        from workers.settings.process import current_settings

        self._step(f"moving {SERVICE} back to {target} by hand (failover move)")
        settings = current_settings()
        started = time.monotonic()
        outcome = move(settings, app, SERVICE, target, "demo: move back", 10.0)
        seconds = time.monotonic() - started
        self.story.add(
            f"manual move: {SERVICE} moved to {outcome.node} at epoch {outcome.epoch} "
            f"in {seconds:.2f} s"
        )

    def _watch(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._refresh()
            time.sleep(0.25)

    # -- helpers ------------------------------------------------------------------------
    def _cluster(self) -> LocalCluster:
        assert self.cluster is not None
        return self.cluster

    def _owner(self) -> tuple[str | None, int]:
        return self._cluster().owners()[SERVICE]

    def _owned(self, other_than: str | None = None) -> tuple[str, int] | None:
        """The owner and epoch once someone (other than `other_than`) owns the service."""
        owner, epoch = self._owner()
        return (owner, epoch) if owner is not None and owner != other_than else None

    def _wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self._refresh()
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    def _step(self, line: str) -> None:
        if self.headless:
            self.console.print(Text(line, style="dim"))
        self.story.add(f"- {line}")
        self._refresh()

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._view())

    def _pause_live(self) -> None:
        if self.live is not None:
            self.live.stop()

    def _resume_live(self) -> None:
        if self.live is not None:
            self.live.start()

    def _view(self) -> Group:
        from workers.operations.status import cluster_status, render
        from workers.stores.database import transaction

        if self.cluster is None:
            return Group(Panel("starting the servers..."))
        settings = load_settings()
        with transaction(settings) as connection:
            report = cluster_status(connection, settings, events=6)
        owner, epoch = self._owner()
        work = self.cluster.ticks(SERVICE, epoch)
        steps = "\n".join(line for line in self.story.lines[-6:])
        footer = f"{SERVICE} on {owner} at epoch {epoch}: {work} units of work done\n{steps}"
        return Group(render(report), Panel(Text(footer), title="demo"))


def write_demo_config(folder: Path) -> Path:
    """A hot folder and a sample script for the demo's nodes."""
    inbox = folder / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    config = folder / "demo.toml"
    config.write_text(
        f"""
[[hot_folders]]
name = "inbox"
path = "{inbox}"
handler = "workers.services.folder_monitor:accept"
settle_seconds = 0.2

[scripts.hello]
argv = ["{sys.executable}", "-c", "import socket; print('hello from', socket.gethostname())"]
interval = 3
timeout = 10
"""
    )
    return config


class FileProducer:
    """Drops a file in the hot folder every few tenths of a second, as a scanner would."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            temporary = self.inbox / f"scan-{self.dropped:05}.pdf.tmp"
            temporary.write_text(f"document {self.dropped}")
            temporary.rename(temporary.with_suffix(""))
            self.dropped += 1


def summary(story: Story) -> str:
    lines = ["demo summary:"] + [f"  {line}" for line in story.lines if not line.startswith("- ")]
    return "\n".join(lines)


@click.command("demo")
@click.option("--headless", is_flag=True, help="No live view: run the script, print a summary.")
@click.option("--duration", default=0.0, show_default=True, help="Keep watching this long (s).")
def demo(headless: bool, duration: float) -> None:
    """A local three-node cluster and a failover to watch; leaves nothing running."""
    import signal

    stopped: list[int] = []

    def interrupt(signum: int, _frame: object) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt

    for closing in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(closing, interrupt)
    console = Console()
    try:
        story = Demo(console, headless, duration).run()
    except (KeyboardInterrupt, Exception) as error:
        # The interrupt lands at any point, and a library's cleanup may raise over it (a
        # database ping cut mid-query raises ProgrammingError): stopped is stopped.
        if stopped or isinstance(error, KeyboardInterrupt):
            console.print("demo stopped: every process it started is gone")
            sys.exit(130)
        if isinstance(error, TimeoutError):
            raise Refused(str(error)) from None
        raise
    click.echo(summary(story))
