"""The `failover` command: the operator's interface to the cluster (see DESIGN.md).

Every error is one line on stderr: exit 1 when the cluster refused or failed, exit 2 for
usage and configuration errors and an unreachable database.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import click
from rich.console import Console

from workers.errors import FailoverError
from workers.settings import ENV_PREFIX, Settings, load_settings


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    return load_settings(ctx.obj, **flags)


@click.group()
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
    from workers.database import upgrade_schema

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
    from workers import store
    from workers.database import transaction
    from workers.errors import Refused

    settings = _settings(ctx, **flags)
    _export(ctx, flags)
    name, _region = settings.require_node()
    with transaction(settings) as connection:
        holder = store.name_holder(connection, name)
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
    from workers.celery import app
    from workers.node import adopt_node
    from workers.routing import node_queue

    adopt_node(name)
    celery_worker = app.Worker(
        hostname=f"{name}@{socket.gethostname()}",
        queues=[node_queue(name)],
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
    from workers.database import transaction
    from workers.status import cluster_status, render

    settings = _settings(ctx)
    with transaction(settings) as connection:
        report = cluster_status(connection, events)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        Console().print(render(report))


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
