"""The `failover` command: the operator's interface to the cluster (see docs/design.md).

Every error is one line on stderr: exit 1 when the cluster refused or failed, exit 2 for
usage and configuration errors and an unreachable database.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click
from rich.console import Console

from workers.errors import FailoverError, Refused
from workers.settings import ENV_PREFIX, Settings, load_settings
from workers.stores import registration

COMMAND_GROUP = "celery_failover.commands"


class WithInstalledCommands(click.Group):
    """A group that also offers the commands installed packages declare in
    `celery_failover.commands` (as Flask's CLI does): `failover demo` comes so from
    `workers.testing`, which sits above this module. One is imported only when it is run."""

    def _installed(self) -> dict[str, EntryPoint]:
        return {entry.name: entry for entry in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._installed()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and (entry := self._installed().get(cmd_name)):
            command = entry.load()
        return command


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    return load_settings(ctx.obj, **flags)


@click.group(cls=WithInstalledCommands)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"TOML settings file (or {ENV_PREFIX}CONFIG).",
)
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """High availability for singleton services on Celery, Redis and PostgreSQL."""
    ctx.obj = config


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema (idempotent; uses FAILOVER_ADMIN_DATABASE_URL if set)."""
    from workers.stores.database import upgrade_schema

    settings = _settings(ctx)
    revision = upgrade_schema(settings)
    click.echo(f"schema is at revision {revision}")


@cli.command()
@click.option(
    "--node", "node_name", required=True, help="This node's name (its queue is node.NAME)."
)
@click.option("--region", help="Where this node runs (default: FAILOVER_REGION or 'default').")
@click.option("--ip", "ip_address", help="The node's application address, checked over HTTP.")
@click.option("--port", "port_number", help="The node's application port.")
@click.option("--app-context", help="The application's path, such as /dcma.")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default=None)
@click.option("--concurrency", type=int, default=None)
@click.option("--loglevel", "log_level", default=None)
@click.pass_context
def worker(ctx: click.Context, /, **flags: Any) -> None:
    """Run a node: its Celery worker on node.NAME and its own staggered heartbeat."""
    from workers import services
    from workers.runtime.app import app
    from workers.stores.broker import check_broker
    from workers.stores.database import transaction

    settings = _settings(ctx, **flags)
    _export(ctx, flags)
    name, _region = settings.require_node()
    services.check_all(settings)
    check_broker(app, settings, wait=True)
    with transaction(settings) as connection:
        holder = registration.name_holder(connection, name)
    if holder:
        raise Refused(holder)
    sys.exit(_run_worker(settings, name))


def _export(ctx: click.Context, flags: dict[str, Any]) -> None:
    """Pass the flags to the worker's processes through the environment (flag beats env)."""
    if ctx.obj:
        os.environ[f"{ENV_PREFIX}CONFIG"] = str(ctx.obj)
    for key, value in flags.items():
        if value is not None:
            os.environ[f"{ENV_PREFIX}{key.upper()}"] = str(value)


def _run_worker(settings: Settings, name: str) -> int:
    from workers.queues.routing import SHARED_QUEUE, node_queue
    from workers.runtime.app import app
    from workers.settings.process import adopt_node

    adopt_node(name)
    queues = [node_queue(name)] + ([SHARED_QUEUE] if settings.folder_dispatch == "shared" else [])
    celery_worker = app.Worker(
        hostname=f"{name}@{socket.gethostname()}",
        queues=queues,
        pool_cls=settings.pool,
        concurrency=settings.concurrency,
        loglevel=settings.log_level,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
    )
    celery_worker.start()
    return int(celery_worker.exitcode or 0)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--events", default=10, show_default=True, help="How many ownership events.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, events: int) -> None:
    """Nodes, services and recent ownership events, from the database."""
    from workers.operations.status import cluster_status, render
    from workers.stores.database import transaction

    settings = _settings(ctx)
    with transaction(settings) as connection:
        report = cluster_status(connection, settings, events)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        Console().print(render(report))


GRACE = click.option(
    "--grace",
    type=click.FloatRange(min=0),
    help="Seconds the owner's running work may take to finish first [default: the "
    "node's FAILOVER_HANDOVER_GRACE].",
)
NOW = click.option("--now", is_flag=True, help="Cut the owner's running work: move at once.")


def _grace(grace: float | None, now: bool) -> float | None:
    """The grace a planned handover gives (None: the node's setting); --now is none."""
    if now and grace is not None:
        raise click.UsageError("give either --grace or --now, not both")
    return 0.0 if now else grace


def _say(line: str) -> None:
    click.echo(f"  {line}")


@cli.command()
@click.argument("service")
@click.option("--to", "target", help="The node to move it to (default: the best candidate).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the target.")
@click.option("--reason", default=None, help="Why, recorded in the history.")
@GRACE
@NOW
@click.pass_context
def move(
    ctx: click.Context,
    service: str,
    target: str | None,
    timeout: float,
    reason: str | None,
    grace: float | None,
    now: bool,
) -> None:
    """Manual failover: move SERVICE to a live node and print the new owner and epoch.

    Work the owner is running finishes first (a planned handover), then the service moves."""
    from workers.operations import maintenance
    from workers.runtime.app import app

    settings = _settings(ctx)
    why = reason or "manual move"
    outcome = maintenance.move(
        settings, app, service, target, why, timeout, _grace(grace, now), _say
    )
    click.echo(outcome.describe())


@cli.command()
@click.argument("node")
@click.option("--force", is_flag=True, help="Drain even the last node able to run a service.")
@click.option(
    "--timeout", type=float, help="Seconds to wait for the moves [default: the grace + 30]."
)
@GRACE
@NOW
@click.pass_context
def drain(
    ctx: click.Context,
    node: str,
    force: bool,
    timeout: float | None,
    grace: float | None,
    now: bool,
) -> None:
    """Move every service off NODE and keep it out of takeovers until `undrain`.

    Work NODE is running finishes first (a planned handover), then each service moves."""
    from workers.operations import maintenance

    settings = _settings(ctx)
    given = _grace(grace, now)
    stuck = maintenance.drain(settings, node, force, given)
    click.echo(f"{node} is draining")
    if timeout is None:
        timeout = (settings.handover_grace if given is None else given) + 30.0
    left = maintenance.watch_drain(settings, node, timeout, _say)
    if left and set(left) <= set(stuck):
        click.echo(f"{node} keeps {', '.join(left)}: no other live node can run it")
    elif left:
        raise Refused(f"{node} still owns {', '.join(left)} after {timeout:g} s (still draining)")
    else:
        click.echo(f"{node} owns no service")


@cli.command()
@click.argument("node")
@click.pass_context
def undrain(ctx: click.Context, node: str) -> None:
    """Return NODE to normal: it may take services again."""
    from workers.operations import maintenance

    maintenance.undrain(_settings(ctx), node)
    click.echo(f"{node} is back in service")


@cli.command()
@click.argument("service", required=False)
@click.option("--since", default=None, help="An ISO time, or a duration back such as 15m, 2h, 1d.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--svg", "svg", type=click.Path(dir_okay=False), help="Write the timeline to SVG.")
@click.option("--window", default="1h", show_default=True, help="With --svg: 15m, 1h, 6h, 24h, 7d.")
@click.pass_context
def history(
    ctx: click.Context,
    service: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    svg: str | None,
    window: str,
) -> None:
    """Every change of owner, newest first; or, with --svg, the ownership timeline."""
    from rich.console import Console as RichConsole

    from workers.operations.status import event_table
    from workers.operations.status import history as read_history
    from workers.stores.database import transaction

    if svg is not None:
        from workers.operations.timeline_svg import write_svg

        write_svg(_settings(ctx), svg, window)
        click.echo(f"wrote the ownership timeline of the last {window} to {svg}")
        return
    with transaction(_settings(ctx)) as connection:
        events = read_history(connection, service, since, limit)
    if as_json:
        click.echo(json.dumps(events, indent=2))
    else:
        RichConsole().print(event_table("Ownership history", events))


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=9808, show_default=True)
@click.pass_context
def metrics(ctx: click.Context, address: str, port: int) -> None:
    """Serve the cluster's metrics for Prometheus at http://ADDRESS:PORT/metrics."""
    from prometheus_client import CollectorRegistry, start_http_server

    from workers.operations.metrics import ClusterCollector

    settings = _settings(ctx)
    registry = CollectorRegistry()
    registry.register(ClusterCollector(settings))
    server, _thread = start_http_server(port, address, registry=registry)
    click.echo(f"serving cluster metrics on http://{address}:{port}/metrics")
    _serve_until_stopped(server)


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=9809, show_default=True)
@click.pass_context
def web(ctx: click.Context, address: str, port: int) -> None:
    """Serve the status page, its JSON, the timeline and /metrics at http://ADDRESS:PORT/."""
    from workers.operations import web as site

    server = site.serve(_settings(ctx), address, port)
    click.echo(f"serving the status page on http://{address}:{port}/")
    _serve_until_stopped(server)


def _serve_until_stopped(server: Any) -> None:
    """Serve until SIGTERM or Ctrl-C, then shut the server down."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()


@cli.command("run-script")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait for the run; print its exit code and output.")
@click.option(
    "--timeout", default=30.0, show_default=True, help="Seconds for the owner to start it."
)
@click.pass_context
def run_script(ctx: click.Context, name: str, wait: bool, timeout: float) -> None:
    """Run the allow-listed script NAME now, on the owner of app_script."""
    from workers.operations.maintenance import run_script_now
    from workers.runtime.app import app

    settings = _settings(ctx)
    outcome = run_script_now(settings, app, name, wait, timeout)
    if not wait:
        click.echo(f"queued {name} on {outcome['node']} (epoch {outcome['epoch']})")
        return
    click.echo(outcome["output_tail"].rstrip("\n"))
    click.echo(
        f"{name}: {outcome['status']}, exit code {outcome['exit_code']} on {outcome['node']}"
    )
    if outcome["status"] != "succeeded":
        sys.exit(1)


def main() -> None:
    """Entry point: run the CLI, turning every expected error into one line and an exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except FailoverError as error:
        click.echo(f"failover: {error}", err=True)
        sys.exit(error.exit_code)
    except Exception as error:
        if os.environ.get("FAILOVER_DEBUG"):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        click.echo(
            f"failover: unexpected {type(error).__name__}: {first} "
            "(set FAILOVER_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(1)
