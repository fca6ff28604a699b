"""A whole cluster as the least-privilege database role and Redis user of `deploy/`.

The deploy files are run as a DBA and an operator would: `deploy/postgres/roles.sql` with
psql as a superuser, `failover db upgrade` as the owner role, `deploy/postgres/grants.sql`
as the owner; Redis starts with `deploy/redis/users.conf` and a password for each user. Then
three (later four) real nodes, the operators' commands, the metrics, the status page and
Flower run as `failover_node` and `failover-node` (Flower as `failover-flower`): a takeover,
a move, a drain, files, scripts, retention, node pruning and a custom service's fenced
transaction, each checked by an outcome that a missing right would prevent, and no log says
a right was missing. Last, what the roles must not do is tried and refused.

Roles and ACL users are server-wide, so the module starts a PostgreSQL and a Redis of its
own, shared by its tests (in order), with one cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis
import requests
from kombu import Connection
from psycopg import errors, sql

from tests.e2e.test_custom_service import readme_examples, readme_handler
from tests.support.cluster import Cluster, wait_until
from tests.support.flower import (
    flower,
    free_port,
    queue_lengths,
    serve,
    stop,
    workers_listed,
    workers_shown,
)
from tests.support.handlers import handled
from tests.support.postgres_server import PostgresServer, postgres_server
from tests.support.redis_server import RedisServer, redis_binary_at_least, redis_server
from tests.support.replicas import postgres_bindir
from tests.support.servers import HEAD_REVISION
from workers.errors import StaleEpoch
from workers.fence.fencing import Fence
from workers.services import ServiceFence
from workers.settings import load_settings
from workers.settings.process import Identity

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DEPLOY = Path(__file__).parents[2] / "deploy"
ROLES_SQL = DEPLOY / "postgres" / "roles.sql"
GRANTS_SQL = DEPLOY / "postgres" / "grants.sql"
USERS_CONF = DEPLOY / "redis" / "users.conf"
DATABASE = "failover"
OWNER, NODE = "failover_owner", "failover_node"
NODE_USER, FLOWER_USER = "failover-node", "failover-flower"
CUSTOM = "ledger_rollup"
SERVICES = ("app_script", "folder_monitor", CUSTOM)
DENIED = re.compile(r"permission denied|must be owner|NOPERM|InsufficientPrivilege", re.I)

# What the nodes' role holds on each table, and nothing else (TRUNCATE, REFERENCES and
# TRIGGER on none): the rights grants.sql gives, pinned so that none creeps in unseen.
TABLE_RIGHTS = {
    "server_registry": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "service_status": {"SELECT", "INSERT", "UPDATE"},
    "ownership_history": {"SELECT", "INSERT"},
    "service_tick": {"SELECT", "INSERT", "UPDATE"},
    "folder_file": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "script_run": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "script_schedule": {"SELECT", "INSERT", "UPDATE"},
    "node_event": {"SELECT", "INSERT", "DELETE"},
    "alembic_version": set(),
    CUSTOM: {"INSERT"},
}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
CALLED = {
    "failover_heartbeat",
    "failover_fence",
    "failover_busy",
    "failover_lease_holds",
    "failover_incarnation_gone",
}


@pytest.fixture(autouse=True, scope="module")
def no_worker_left_behind() -> Iterator[None]:
    """This module's servers and cluster outlive each test: nothing may outlive the module."""
    yield
    children = psutil.Process().children(recursive=True)
    workers = [child.pid for child in children if child.is_running() and child.status() != "zombie"]
    assert not workers, f"processes left running: {workers}"


# The stores, set up from deploy/ as a DBA and an operator would


@dataclass
class Stores:
    """The module's PostgreSQL and Redis, and each credential's URL."""

    pg: PostgresServer
    redis: RedisServer
    passwords: dict[str, str]

    def database_url(self, role: str) -> str:
        """The SQLAlchemy URL of the failover database as `role`, with its password."""
        return self.pg.url(DATABASE, user=f"{role}:{self.passwords[role]}")

    def broker_url(self, user: str) -> str:
        return self.redis.url(user, self.passwords[user])

    def superuser(self, statement: str, params: tuple[Any, ...] | None = None) -> list[Any]:
        """One statement in the failover database as `postgres` (the test's own hand)."""
        return self.pg.query(self.pg.primary, statement, params, database=DATABASE)

    def connect(self, role: str) -> psycopg.Connection[Any]:
        """A psycopg connection to the failover database as `role`, in autocommit."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.pg.port,
            dbname=DATABASE,
            user=role,
            password=self.passwords[role],
            autocommit=True,
        )

    def server_log(self) -> str:
        return self.pg.primary.log.read_text(errors="replace")


def psql(server: PostgresServer, script: Path, user: str, database: str, password: str = "") -> str:
    """Run a deploy script with psql as `user`, stopping at its first error; its output."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(
        [
            str(postgres_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(server.port), "-U", user, "-d", database,
            "-f", str(script),
        ],
        capture_output=True,
        text=True,
        env={**environment, "PGPASSWORD": password},
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"psql -f {script.name} as {user}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def set_password(server: PostgresServer, role: str, password: str) -> None:
    """What the DBA's `\\password ROLE` does, from a script: ALTER ROLE ... PASSWORD."""
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(password)
    )
    with psycopg.connect(server.primary.conninfo(), autocommit=True) as connection:
        connection.execute(statement)


def with_passwords(conf: str, passwords: dict[str, str]) -> str:
    """users.conf with each user's password as its SHA-256 hash, as its header's `sed` adds it."""
    for user, password in passwords.items():
        digest = hashlib.sha256(password.encode()).hexdigest()
        conf = re.sub(rf"(?m)^user {re.escape(user)} on ", rf"\g<0>#{digest} ", conf)
    return conf


@pytest.fixture(scope="module")
def stores() -> Iterator[Stores]:
    binary = redis_binary_at_least((7, 0))
    if binary is None:
        pytest.skip("the Redis users need Redis 7 (read-only keys, ACL DRYRUN): apt install redis")
    passwords = {role: secrets.token_urlsafe(18) for role in (OWNER, NODE, NODE_USER, FLOWER_USER)}
    rules = [
        "local all postgres trust",
        "host all postgres 127.0.0.1/32 trust",
        f"host {DATABASE} {OWNER},{NODE} 127.0.0.1/32 scram-sha-256",
    ]
    settings = {"log_line_prefix": "'%m [%p] %u@%d '"}
    redis_users = with_passwords(
        USERS_CONF.read_text(), {u: passwords[u] for u in (NODE_USER, FLOWER_USER)}
    )
    with (
        postgres_server(settings=settings, hba=rules) as pg,
        redis_server(
            ["include users.conf", "acllog-max-len 1000"], {"users.conf": redis_users}, binary
        ) as broker,
    ):
        # The DBA: roles.sql (twice: it is idempotent), then the passwords
        for _ in range(2):
            psql(pg, ROLES_SQL, "postgres", "postgres")
        for role in (OWNER, NODE):
            set_password(pg, role, passwords[role])
        found = Stores(pg, broker, passwords)
        # The operator: migrate as the owner (the nodes' URL beside it, as on a node), then
        # the grants, twice; and a team's own table, created as the owner with its grant
        migrated = subprocess.run(
            [sys.executable, "-m", "workers", "db", "upgrade"],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "FAILOVER_DATABASE_URL": found.database_url(NODE),
                "FAILOVER_ADMIN_DATABASE_URL": found.database_url(OWNER),
            },
            timeout=120,
        )
        assert migrated.returncode == 0, migrated.stderr
        assert f"schema is at revision {HEAD_REVISION}" in migrated.stdout
        for _ in range(2):
            psql(pg, GRANTS_SQL, OWNER, DATABASE, passwords[OWNER])
        examples = readme_examples()
        with found.connect(OWNER) as owner:
            owner.execute(examples["team_tables.sql"].encode())
            owner.execute(examples["team_grants.sql"].encode())
        yield found


# The cluster, as the nodes' role and user


TOML = """
[[hot_folders]]
name = "inbox"
path = "{inbox}"
handler = "tests.support.handlers:record"
settle_seconds = 0

[scripts.stamp]
argv = ["{python}", "-c", "print('stamped')"]
interval = 1
timeout = 10

[scripts.report]
argv = ["{python}", "-c", "print('report done')"]
timeout = 10
"""


@dataclass
class Scene:
    """The running cluster, its hot folder and handler log, and the moment it started in the
    server's log (denials before it are the tests' own)."""

    cluster: Cluster
    stores: Stores
    folder: Path
    inbox: Path
    handler_log: Path
    log_offset: int
    dropped: list[str] = field(default_factory=list)

    def owner(self, service: str) -> tuple[str | None, int]:
        return self.cluster.owners()[service]

    def drop(self, prefix: str, count: int) -> list[str]:
        """Drop `count` files into the hot folder; their names."""
        names = [f"{prefix}-{i:03}.dat" for i in range(count)]
        for name in names:
            (self.inbox / name).write_text(name)
        self.dropped.extend(names)
        return names

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`failover ARGS` as the nodes' role and user; it must succeed."""
        done = self.cluster.cli(*args)
        assert done.returncode == 0, f"failover {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done


@pytest.fixture(scope="module")
def scene(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("least-privilege")
    inbox = folder / "inbox"
    inbox.mkdir()
    examples = readme_examples()
    (folder / "team_jobs.py").write_text(examples["team_jobs.py"])
    custom = re.sub(r"(?m)^interval = \d+", "interval = 0.3", examples["failover.toml"])
    toml = folder / "failover.toml"
    toml.write_text(TOML.format(inbox=inbox, python=sys.executable) + custom)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(
        folder,
        stores.database_url(NODE),
        stores.broker_url(NODE_USER),
        FAILOVER_CONFIG=str(toml),
        PYTHONPATH=path,
        TEST_HANDLER_LOG=str(folder / "handled.log"),
    )
    offset = len(stores.server_log())
    try:
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 30, "a to claim every service")
        cluster.start_live("b", "r1")
        cluster.start_live("c", "r2")
        yield Scene(cluster, stores, folder, inbox, folder / "handled.log", offset)
    finally:
        cluster.close()


# The tests, in order: what runs as the role works, then what the role must not do


def holds(stores: Stores, table: str, right: str) -> bool:
    """Whether the nodes' role holds `right` on the whole of `table` (itself or by PUBLIC)."""
    found = stores.superuser("SELECT has_table_privilege(%s, %s, %s)", (NODE, table, right))
    return bool(found[0][0])


def test_the_roles_hold_exactly_the_rights_of_the_deploy_files(stores: Stores):
    # Every object of the schema (and the team's table) belongs to the owner
    owned = stores.superuser(
        "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v', 'i') "
        "UNION ALL SELECT p.proname, pg_get_userbyid(p.proowner) FROM pg_proc AS p "
        "JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
    )
    assert owned and {owner for _, owner in owned} == {OWNER}, owned
    # Each table's rights for the nodes' role (through PUBLIC too) are exactly these
    tables = stores.superuser(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r'"
    )
    assert {name for (name,) in tables} == set(TABLE_RIGHTS), "a table grants.sql does not name"
    for table, expected in TABLE_RIGHTS.items():
        held = {right for right in TABLE_PRIVILEGES if holds(stores, table, right)}
        assert held == expected, table
    # One column's UPDATE on node_event: the retention's row locks (FOR UPDATE) need it
    columns = stores.superuser(
        "SELECT column_name FROM information_schema.column_privileges "
        "WHERE grantee = %s AND privilege_type = 'UPDATE' AND table_name = 'node_event'",
        (NODE,),
    )
    assert columns == [("id",)]
    # It may run only the functions it calls, and has no sequence
    functions = stores.superuser(
        "SELECT p.proname, has_function_privilege(%s, p.oid, 'EXECUTE') FROM pg_proc AS p "
        "JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
        (NODE,),
    )
    assert {name for name, allowed in functions if allowed} == CALLED
    sequences = stores.superuser(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND CASE WHEN c.relkind = 'S' "
        "THEN has_sequence_privilege(%s, c.oid, 'USAGE,SELECT,UPDATE') END",
        (NODE,),
    )
    assert sequences == []
    # On the database: connect and temporary tables; on the schema: look-ups only
    database = stores.superuser(
        "SELECT has_database_privilege(%s, %s, 'CONNECT'), "
        "has_database_privilege(%s, %s, 'TEMPORARY'), has_database_privilege(%s, %s, 'CREATE'), "
        "has_schema_privilege(%s, 'public', 'USAGE'), has_schema_privilege(%s, 'public', 'CREATE')",
        (NODE, DATABASE) * 3 + (NODE, NODE),
    )
    assert database == [(True, True, False, True, False)]
    # And the nodes' role is a plain login role
    attributes = stores.superuser(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
        "FROM pg_roles WHERE rolname = %s",
        (NODE,),
    )
    assert attributes == [(False, False, False, False, False, True)]


def test_a_takeover_after_kill_9_as_the_nodes_role(scene: Scene):
    cluster = scene.cluster
    # Given a owning every service, and files arriving
    scene.drop("before", 20)
    wait_until(
        lambda: len(handled(scene.handler_log)) >= 20, 30, "the first files to be handled by a"
    )
    epochs = {service: scene.owner(service)[1] for service in SERVICES}
    assert all(scene.owner(service)[0] == "a" for service in SERVICES)
    # When a is killed with SIGKILL
    cluster.running("a").crash()
    # Then b, in a's region, takes every service at the next epoch
    wait_until(lambda: cluster.owned_by("b"), 30, "b to take over")
    for service in SERVICES:
        assert scene.owner(service) == ("b", epochs[service] + 1)
    reasons = cluster.query(
        "SELECT service_type, reason, from_node FROM ownership_history WHERE to_node = 'b'"
    )
    assert {(r.service_type, r.reason, r.from_node) for r in reasons} == {
        (service, "takeover", "a") for service in SERVICES
    }
    # And a comes back as a standby (registering its name again)
    cluster.lapsed("a")
    cluster.start_live("a", "r1")
    scene.drop("after-takeover", 20)


def test_move_and_drain_as_the_nodes_role(scene: Scene):
    cluster = scene.cluster
    _, epoch = scene.owner("folder_monitor")
    # When an operator moves the folder monitor to c, c owns it at the next epoch
    moved = scene.cli("move", "folder_monitor", "--to", "c", "--reason", "least privilege")
    assert f"moved folder_monitor to c at epoch {epoch + 1}" in moved.stdout
    assert scene.owner("folder_monitor") == ("c", epoch + 1)
    scene.drop("after-move", 20)
    # When c is drained, it owns nothing, and it is flagged in the database
    drained = scene.cli("drain", "c")
    assert "c owns no service" in drained.stdout
    assert all(scene.owner(service)[0] != "c" for service in SERVICES)
    assert cluster.node_row("c").draining
    scene.cli("undrain", "c")
    assert not cluster.node_row("c").draining


def test_files_and_scripts_as_the_nodes_role(scene: Scene):
    cluster = scene.cluster
    # Every file dropped so far is processed exactly once, across the takeover and the move
    dropped = set(scene.dropped)
    assert len(dropped) == 60
    wait_until(
        lambda: {p.name for p in (scene.inbox / "processed").iterdir()} == dropped,
        30,
        "every file to be processed",
    )
    counts = handled(scene.handler_log)
    assert counts == dict.fromkeys(dropped, 1)
    processed = cluster.query("SELECT count(*) AS n FROM folder_file WHERE state = 'processed'")
    assert processed[0].n == len(dropped)
    # The scheduled script runs on its owner, and an on-demand one with --wait
    wait_until(
        lambda: cluster.query(
            "SELECT 1 FROM script_run WHERE script = 'stamp' AND trigger IN ('schedule', 'missed') "
            "AND status = 'succeeded'"
        ),
        30,
        "a scheduled run of stamp",
    )
    ran = scene.cli("run-script", "report", "--wait")
    assert "report done" in ran.stdout and "succeeded, exit code 0" in ran.stdout


def test_a_custom_service_fenced_transaction_as_the_nodes_role(scene: Scene):
    cluster = scene.cluster
    # The owner's handler writes the team's table through its fence at its epoch
    owner, epoch = scene.owner(CUSTOM)
    assert owner is not None

    def rolled(node: str, at_epoch: int) -> int:
        rows = scene.stores.superuser(
            "SELECT count(*) FROM ledger_rollup WHERE node = %s AND epoch = %s", (node, at_epoch)
        )
        return int(rows[0][0])

    wait_until(lambda: rolled(owner, epoch) >= 2, 30, f"{owner} to roll up at epoch {epoch}")
    # And a write at an older epoch, as the nodes' role, is refused and counted
    settings = load_settings(
        scene.folder / "failover.toml",
        database_url=scene.stores.database_url(NODE),
        broker_url=scene.stores.broker_url(NODE_USER),
    )
    incarnation = str(cluster.node_row(owner).incarnation)
    stale = ServiceFence.of(settings, Fence(CUSTOM, Identity(owner, incarnation), epoch - 1))
    before = int(cluster.node_row(owner).rejected_side_effects)
    with pytest.raises(StaleEpoch, match=f"owner {owner}, epoch {epoch}"):
        readme_handler(scene.folder)(stale)
    assert int(cluster.node_row(owner).rejected_side_effects) == before + 1
    assert rolled(owner, epoch - 1) == 0


def test_retention_and_node_pruning_as_the_nodes_role(scene: Scene):
    cluster, stores = scene.cluster, scene.stores
    # Given ledger rows and node events finished long ago, and a node stopped long ago (aged
    # by hand: the default retentions are 30 and 7 days)
    recent = cluster.query("SELECT count(*) AS n FROM folder_file WHERE state = 'processed'")[0].n
    stores.superuser(
        "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, finished_at) "
        "SELECT 'inbox', 'old-' || i, 1, 1, 'processed', now() - interval '40 days' "
        "FROM generate_series(1, 5) AS i"
    )
    stores.superuser(
        "INSERT INTO script_run (script, node, epoch, trigger, started_at, finished_at, status) "
        "SELECT 'stamp', 'a', 1, 'schedule', now() - interval '41 days', "
        "now() - interval '40 days', 'succeeded' FROM generate_series(1, 5)"
    )
    stores.superuser(
        "INSERT INTO node_event (node_name, region, event, at) "
        "SELECT 'ghost', 'r9', 'started', now() - interval '40 days' FROM generate_series(1, 5)"
    )
    stores.superuser(
        "INSERT INTO server_registry (node_name, region, incarnation, lease_timeout_s, "
        "heartbeat_interval_s, started_at, last_heartbeat_at, stopped_at) VALUES ('ghost', "
        "'r9', gen_random_uuid(), 1.5, 0.3, now() - interval '11 days', "
        "now() - interval '10 days', now() - interval '10 days')"
    )
    # When a new node d registers, it removes the long-stopped node
    cluster.start_live("d", "r2")
    assert cluster.node_row("ghost") is None
    # and when both built-in services move to d, its first service work prunes their ledgers
    for service in ("folder_monitor", "app_script"):
        scene.cli("move", service, "--to", "d", "--reason", "retention")
    month = "now() - interval '30 days'"
    old = (
        f"SELECT (SELECT count(*) FROM folder_file WHERE finished_at < {month}) "
        f"+ (SELECT count(*) FROM script_run WHERE finished_at < {month}) "
        f"+ (SELECT count(*) FROM node_event WHERE at < {month})"
    )
    wait_until(lambda: stores.superuser(old)[0][0] == 0, 30, "d to prune the old rows")
    # Then only the old rows went: the recent ledger and the history are whole
    kept = cluster.query("SELECT count(*) AS n FROM folder_file WHERE state = 'processed'")[0].n
    assert kept == recent
    assert cluster.query("SELECT count(*) AS n FROM script_run")[0].n > 0
    assert "deleted" in cluster.running("d").log()


def test_status_metrics_and_the_status_page_as_the_nodes_role(scene: Scene):
    cluster = scene.cluster
    # failover status (wide enough not to cut the names) and its JSON
    cluster.env["COLUMNS"] = "400"
    printed = scene.cli("status").stdout
    assert "folder_monitor" in printed and "ledger_rollup" in printed and "stamp" in printed
    report = json.loads(scene.cli("status", "--json").stdout)
    owners = {s["service"]: (s["owner"], s["epoch"]) for s in report["services"]}
    assert owners == {service: scene.owner(service) for service in SERVICES}
    history = json.loads(scene.cli("history", "folder_monitor", "--json").stdout)
    assert {event["reason"] for event in history} >= {"startup", "takeover", "manual"}
    # The metrics endpoint
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    metrics = serve(cluster, [sys.executable, "-m", "workers", "metrics", "--port", str(port)], url)
    try:
        text = requests.get(url, timeout=5).text
        assert "failover_database_up 1.0" in text
        assert 'failover_service_owner{node="d",service="folder_monitor"} 1.0' in text
    finally:
        stop(metrics)
    # The status page, its JSON and the timeline
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = serve(cluster, [sys.executable, "-m", "workers", "web", "--port", str(port)], base + "/")
    try:
        page = requests.get(base + "/", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
        status = requests.get(base + "/api/status", timeout=5)
        assert status.status_code == 200
        shown = {s["service"]: s["owner"] for s in status.json()["services"]}
        assert shown["folder_monitor"] == "d"
        timeline = requests.get(base + "/timeline.svg?window=15m", timeout=5)
        assert timeline.status_code == 200 and "<svg" in timeline.text
    finally:
        stop(web)


def test_flower_works_with_its_own_user(scene: Scene):
    cluster, stores = scene.cluster, scene.stores
    # Flower with its own Redis user and no database credential at all
    env = {k: v for k, v in cluster.env.items() if k != "FAILOVER_DATABASE_URL"}
    env["FAILOVER_BROKER_URL"] = stores.broker_url(FLOWER_USER)
    with flower(cluster, "--enable_events=False", env=env) as base:
        # lists every node (an inspect broadcast and its replies)
        listed = wait_until(
            lambda: workers_listed(base, {"a", "b", "c", "d"}), 60, "Flower to ask the nodes"
        )
        queues = {
            name.split("@")[0]: {q["name"] for q in info.get("active_queues") or []}
            for name, info in listed.items()
        }
        assert "node.d" in queues["d"]
        # and shows them from the events it listens to (the workers' own heartbeats)
        nodes = {"a", "b", "c", "d"}
        wait_until(lambda: workers_shown(base) >= nodes, 30, "Flower's workers page")
        # and its broker page reads the nodes' queues as its user
        assert {"node.a", "node.d"} <= set(queue_lengths(base))
    # And it may run kombu's sweep of binding tables no consumer refreshed in time, which its
    # event consumer runs every minute over every exchange's table (here one long overdue)
    with stores.redis.client() as admin:
        admin.sadd("_kombu.binding.gone", "member")
        admin.zadd("_kombu.binding_deadlines", {"gone": 0})
    with Connection(stores.broker_url(FLOWER_USER)) as connection:
        assert connection.default_channel.sweep_bindings() >= 1
    with stores.redis.client() as admin:
        assert not admin.exists("_kombu.binding.gone")
        refused = [entry for entry in admin.acl_log() if entry["username"] == FLOWER_USER]
    assert refused == [], refused


def test_no_log_says_a_right_was_missing(scene: Scene):
    for node in scene.cluster.nodes:
        said = [line for line in node.log().splitlines() if DENIED.search(line)]
        assert said == [], f"{node.name}: {said[:5]}"
    refused = [
        line
        for line in scene.stores.server_log()[scene.log_offset :].splitlines()
        if DENIED.search(line)
    ]
    assert refused == [], refused[:10]
    with scene.stores.redis.client() as admin:
        entries = admin.acl_log()
    assert entries == [], entries[:5]


# What the roles must not do


def refused_with(stores: Stores, role: str, statement: str, error: type[Exception]) -> str:
    """Run `statement` as `role`; it must fail with `error`. The message."""
    with stores.connect(role) as connection, pytest.raises(error) as caught:
        connection.execute(statement.encode())
    return str(caught.value)


def test_the_nodes_role_cannot_change_the_schema_the_history_or_the_heartbeat(stores: Stores):
    denied = errors.InsufficientPrivilege
    # No schema: no table of its own, no change to one of the product's
    for statement in (
        "CREATE TABLE public.mine (id int)",
        "CREATE TABLE mine (id int)",
        "ALTER TABLE server_registry ADD COLUMN mine int",
        "ALTER TABLE service_status DROP CONSTRAINT service_status_epoch_check",
        "DROP TABLE script_schedule",
        "CREATE INDEX mine ON folder_file (node)",
        "TRUNCATE ownership_history",
        "TRUNCATE folder_file",
        "SELECT * FROM alembic_version",
    ):
        refused_with(stores, NODE, statement, denied)
    # The history's protection stays: its trigger cannot be dropped, altered or disabled
    for statement in (
        "DROP TRIGGER ownership_history_append_only ON ownership_history",
        "ALTER TABLE ownership_history DISABLE TRIGGER ownership_history_append_only",
        "ALTER TABLE ownership_history DISABLE TRIGGER ALL",
        "ALTER TRIGGER ownership_history_append_only ON ownership_history RENAME TO gone",
        "DROP FUNCTION ownership_history_append_only() CASCADE",
        "CREATE OR REPLACE FUNCTION ownership_history_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "SET session_replication_role = replica",
    ):
        refused_with(stores, NODE, statement, denied)
    # and the history cannot be rewritten or erased
    for statement in (
        "UPDATE ownership_history SET reason = 'manual'",
        "DELETE FROM ownership_history",
    ):
        refused_with(stores, NODE, statement, denied)
    # (nor by the owner: the append-only trigger refuses even the table's owner)
    message = refused_with(stores, OWNER, "DELETE FROM ownership_history", errors.RaiseException)
    assert "ownership_history is append-only" in message
    # The heartbeat function cannot be replaced, altered or dropped
    signature = (
        "failover_heartbeat(TEXT, UUID, BOOLEAN, REAL, REAL, REAL, BOOLEAN, TEXT, BOOLEAN, BOOLEAN)"
    )
    for statement in (
        f"CREATE OR REPLACE FUNCTION {signature} RETURNS JSON LANGUAGE sql AS $$ SELECT NULL::json $$",
        f"ALTER FUNCTION {signature} RENAME TO failover_heartbeat_gone",
        f"ALTER FUNCTION {signature} SECURITY DEFINER",
        f"DROP FUNCTION {signature}",
        "CREATE FUNCTION public.failover_heartbeat(p TEXT) RETURNS JSON LANGUAGE sql "
        "AS $$ SELECT NULL::json $$",
    ):
        refused_with(stores, NODE, statement, denied)
    # Nor can it migrate: `failover db upgrade` with only the nodes' URL is refused
    migrated = subprocess.run(
        [sys.executable, "-m", "workers", "db", "upgrade"],
        capture_output=True,
        text=True,
        env={**os.environ, "FAILOVER_DATABASE_URL": stores.database_url(NODE)},
        timeout=120,
    )
    assert migrated.returncode != 0
    assert "permission denied" in migrated.stdout + migrated.stderr


PROTECTED = {"DEBUG"}
"""Commands Redis 7 refuses before any ACL while `enable-debug-command` is `no` (its default)."""


def denied(stores: Stores, user: str, *command: str) -> None:
    """`command` is outside `user`'s rights: the ACL says so without running it (a FLUSHALL
    that were allowed must not empty the test's server), and then running it is refused."""
    with stores.redis.client() as admin:
        verdict = admin.execute_command("ACL", "DRYRUN", user, *command)
    assert verdict != b"OK", f"{user} may run {command}"
    refusal = (
        redis.exceptions.ResponseError
        if command[0] in PROTECTED
        else redis.exceptions.NoPermissionError
    )
    with stores.redis.client(user, stores.passwords[user]) as client, pytest.raises(refusal):
        client.execute_command(*command)


def test_the_redis_users_hold_only_their_commands_and_keys(stores: Stores):
    # The node's user runs no admin or dangerous command
    for command in (
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "appendonly", "yes"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("SHUTDOWN", "NOSAVE"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", NODE_USER, "+@all"),
        ("DEBUG", "SLEEP", "0"),
        ("MONITOR",),
        ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "127.0.0.1:1"),
        ("INFO",),
        ("SCRIPT", "FLUSH"),
        ("EVAL", "return 1", "0"),
        ("FUNCTION", "FLUSH"),
        ("MODULE", "LIST"),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("SAVE",),
        ("MIGRATE", "127.0.0.1", "1", "node.a", "0", "1000"),
    ):
        denied(stores, NODE_USER, *command)
    # nor touches a key or a channel outside its patterns
    for command in (
        ("SET", "session:42", "x"),
        ("GET", "session:42"),
        ("LPUSH", "celery", "x"),
        ("DEL", "unrelated"),
        ("PUBLISH", "other-channel", "x"),
        ("SUBSCRIBE", "__keyspace@0__:node.a"),
    ):
        denied(stores, NODE_USER, *command)
    # while it works on its own keys
    with stores.redis.client(NODE_USER, stores.passwords[NODE_USER]) as node:
        node.lpush("node.zz", "x")
        assert node.brpop(["node.zz"], 1) == (b"node.zz", b"x")
    # Flower's user reads a node's queue, and cannot push a task onto it or take one off
    with stores.redis.client(FLOWER_USER, stores.passwords[FLOWER_USER]) as flower_user:
        assert flower_user.llen("node.a") >= 0
    for command in (
        ("LPUSH", "node.a", "{}"),
        ("RPUSH", "node.a", "{}"),
        ("LPUSH", "failover.processing", "{}"),
        ("RPOP", "node.a"),
        ("BRPOP", "node.a", "1"),
        ("DEL", "node.a"),
        ("SET", "celery-task-meta-x", "{}"),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
    ):
        denied(stores, FLOWER_USER, *command)
    # The default user is off: nobody gets in without a user name and its password
    with stores.redis.client(None) as anonymous:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.execute_command("AUTH", "anything")
    with (
        stores.redis.client(NODE_USER, "not-the-password") as wrong,
        pytest.raises(redis.exceptions.AuthenticationError),
    ):
        wrong.ping()
