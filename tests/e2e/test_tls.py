"""A cluster whose stores speak only verified TLS, end to end (issue 20).

The module starts one CA (`trustme`), one PostgreSQL with `ssl = on` that accepts only TLS
connections with a client certificate from that CA (`hostssl ... clientcert=verify-ca`),
and one Redis with a `tls-port` and no plain port, also requiring a client certificate
(`tests/support/tls.py`). The nodes reach them with the standard URL parameters only:
libpq's `sslmode=verify-full`, `sslrootcert`, `sslcert`, `sslkey` and kombu's
`ssl_cert_reqs=required`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`. Neither server
accepts anything else, so every outcome below needs TLS working; the tests also read from
the servers themselves that the nodes' connections are the encrypted ones. Redis behind
three sentinels that speak only TLS is the other broker tested here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest
import redis
from cryptography import x509
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.e2e.test_store_failover import (
    NAMES,
    cluster_on,
    nodes_follow_a_sentinel_failover,
    start_three,
    wait_processed,
)
from tests.support.cluster import Cluster, wait_until
from tests.support.flower import flower, queue_lengths, workers_listed
from tests.support.handlers import handled
from tests.support.replicas import redis_sentinels
from tests.support.servers import Servers, fresh_database
from tests.support.tls import TlsStores
from tests.support.tls import tls_stores as running_tls_stores

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
FILES = 40


@pytest.fixture(scope="module")
def tls_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStores]:
    """One CA, one PostgreSQL and one Redis behind verified TLS for the whole module."""
    with running_tls_stores(tmp_path_factory.mktemp("tls")) as stores:
        yield stores


@pytest.fixture
def tls_database(tls_stores: TlsStores) -> Iterator[str]:
    """A migrated database of the test's own, reached over verified TLS: its node URL."""
    servers = Servers(
        admin_database_url=tls_stores.database_url("postgres"),
        broker_url=tls_stores.broker_url(0),
        embedded=False,
    )
    with fresh_database(servers) as url:
        yield url


def node_database_sessions(stores: TlsStores) -> list[tuple[str, bool, int | None]]:
    """Every session a node holds on PostgreSQL (`application_name` `failover:NODE:...`):
    its node, whether it is encrypted, and the serial number of the client certificate it
    presented."""
    rows = stores.postgres.query(
        stores.postgres.primary,
        "SELECT a.application_name, s.ssl, s.client_serial FROM pg_stat_activity a "
        "JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'failover:%%'",
    )
    return [(str(name).split(":")[1], bool(ssl), serial) for name, ssl, serial in rows]


def every_node_session_is_encrypted(stores: TlsStores, names: set[str]) -> bool:
    """Whether every node in `names` holds sessions, and every node session is over TLS with
    the node's client certificate."""
    sessions = node_database_sessions(stores)
    node_certificate = x509.load_pem_x509_certificate(stores.pki.client_cert.read_bytes())
    return {node for node, _, _ in sessions} >= names and all(
        encrypted and serial == node_certificate.serial_number for _, encrypted, serial in sessions
    )


def node_sockets(cluster: Cluster, name: str, port: int) -> set[int]:
    """The local ports of node `name`'s TCP connections to 127.0.0.1:`port` (its process
    and any process below it)."""
    node = cluster.running(name)
    assert node is not None, f"{name} is not running"
    root = psutil.Process(node.pid)
    found: set[int] = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found |= {c.laddr.port for c in connections if c.raddr and c.raddr.port == port}
    return found


def listed_clients(client: redis.Redis) -> set[int]:
    """The client ports Redis lists in CLIENT LIST (loopback clients only here)."""
    return {int(entry["addr"].rsplit(":", 1)[1]) for entry in client.client_list()}


def redis_lists_every_node(
    cluster: Cluster, names: list[str], port: int, client: redis.Redis
) -> bool:
    """Whether the Redis server on `port` lists, in CLIENT LIST, a connection of every node."""
    listed = listed_clients(client)
    return all(node_sockets(cluster, name, port) & listed for name in names)


def refuses_plain_connections(port: int) -> bool:
    """Whether a server on `port` refuses a client that does not speak TLS (asked once:
    redis-py's retries would only repeat the refusal, seconds later)."""
    try:
        with redis.Redis(
            port=port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        ) as plain:
            plain.ping()
    except redis.ConnectionError:
        return True
    return False


def test_three_nodes_run_every_operation_over_verified_tls_to_both_stores(
    tmp_path: Path, tls_stores: TlsStores, tls_database: str
) -> None:
    """One cluster through what operators do, every step over TLS to both stores."""
    inbox = tmp_path / "inbox"
    cluster = cluster_on(tmp_path, tls_database, tls_stores.broker_url(0))
    with ExitStack() as stack:
        stack.callback(cluster.close)
        # Given three nodes in two regions (a and b in r1, c in r2) whose only way to the
        # stores is verified TLS, a owning both services, and Flower on the same TLS broker
        start_three(cluster)
        base = stack.enter_context(flower(cluster))
        wait_until(lambda: workers_listed(base, set(NAMES)), 60, "Flower to list the workers")
        # And its broker page reaches Redis over TLS too
        assert {f"node.{name}" for name in NAMES} <= set(queue_lengths(base))
        # Then every session the nodes hold on PostgreSQL is encrypted, with their certificate
        wait_until(
            lambda: every_node_session_is_encrypted(tls_stores, set(NAMES)),
            30,
            "every node's sessions on PostgreSQL to be listed, all encrypted",
        )
        # And Redis has no plain port, and lists the connections of every node on its TLS one
        server = stack.enter_context(tls_stores.redis.client())
        assert server.config_get("port") == {"port": "0"}
        assert server.config_get("tls-auth-clients") == {"tls-auth-clients": "yes"}
        assert refuses_plain_connections(tls_stores.redis.port)
        wait_until(
            lambda: redis_lists_every_node(cluster, NAMES, tls_stores.redis.port, server),
            30,
            "Redis to list a connection of every node",
        )
        # When files arrive in the hot folder, Then each is processed exactly once
        for i in range(FILES):
            (inbox / f"doc-{i:04}.dat").write_text(f"document {i}")
        wait_processed(cluster, inbox, FILES)
        assert handled(tmp_path / "handled.log") == {f"doc-{i:04}.dat": 1 for i in range(FILES)}
        states = cluster.query("SELECT state, count(*) AS n FROM folder_file GROUP BY state")
        assert {row.state: row.n for row in states} == {"processed": FILES}
        # And the scheduled script runs, and a script run on demand is waited for
        wait_until(
            lambda: cluster.query(
                "SELECT 1 FROM script_run WHERE script = 'tick' AND trigger = 'schedule' "
                "AND status = 'succeeded'"
            ),
            30,
            "a scheduled run of tick to succeed",
        )
        ran = cluster.cli("run-script", "hello", "--wait", timeout=90)
        assert ran.returncode == 0, ran.stderr
        assert "hello" in ran.stdout and "succeeded, exit code 0 on a" in ran.stdout
        # When the folder monitor is moved to b, Then b owns it at the next epoch
        moved = cluster.cli("move", "folder_monitor", "--to", "b", timeout=90)
        assert moved.returncode == 0, moved.stderr
        assert cluster.owners()["folder_monitor"] == ("b", 2)
        # When a is drained, Then its scripts go to b (its region), and a is undrained
        drained = cluster.cli("drain", "a", timeout=90)
        assert drained.returncode == 0, drained.stderr
        wait_until(lambda: cluster.owned_by("b"), 30, "b to own both services")
        assert cluster.owners()["app_script"] == ("b", 2)
        undrained = cluster.cli("undrain", "a")
        assert undrained.returncode == 0, undrained.stderr
        # When the owner b is killed (kill -9)
        cluster.running("b").crash()
        # Then a, of b's region, takes both services over at the next epoch, not c
        wait_until(lambda: cluster.owned_by("a"), 30, "a to take both services over")
        assert cluster.owners() == {"folder_monitor": ("a", 3), "app_script": ("a", 3)}
        taken = [row for row in cluster.history() if row.epoch == 3]
        assert {(row.reason, row.to_node) for row in taken} == {("takeover", "a")}
        # And `failover status` reads it all over TLS
        status = subprocess.run(
            [sys.executable, "-m", "workers", "status"],
            capture_output=True,
            text=True,
            env={**cluster.env, "COLUMNS": "400"},
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "folder_monitor" in status.stdout and "takeover" in status.stdout
        report = cluster.cli("status", "--json")
        assert report.returncode == 0, report.stderr
        loaded = json.loads(report.stdout)
        assert {node["name"]: node["active"] for node in loaded["nodes"]} == {
            "a": True,
            "b": False,
            "c": True,
        }
        assert {s["service"]: (s["owner"], s["epoch"]) for s in loaded["services"]} == {
            "folder_monitor": ("a", 3),
            "app_script": ("a", 3),
        }
        # And the survivors' sessions, new ones included, are still all encrypted
        assert every_node_session_is_encrypted(tls_stores, {"a", "c"})


def test_nodes_behind_tls_sentinels_follow_a_promotion_and_nothing_moves(
    tmp_path: Path, tls_stores: TlsStores, tls_database: str
) -> None:
    """The plain Sentinel test's failover, with every Redis process speaking only TLS."""
    with ExitStack() as stack:
        # Given a master, a replica and three sentinels that speak only TLS, with the
        # module's CA, and nodes whose broker URL lists the sentinels with TLS parameters
        sentinels = stack.enter_context(redis_sentinels(tls=tls_stores.pki))
        members = [*sentinels.servers, *sentinels.sentinels]
        assert all(refuses_plain_connections(member.port) for member in members)
        assert "ssl_certfile=" in sentinels.broker_url(0)
        # When the master is killed and Sentinel promotes the replica, Then the nodes follow
        # it with no lapse, nothing moves, and Flower and `failover move` work afterwards
        cluster = nodes_follow_a_sentinel_failover(stack, tmp_path, tls_database, sentinels)
        # And the new master lists a connection of every node, on its TLS-only port
        _, port = sentinels.master_address()
        with sentinels.redis_for_master() as master:
            wait_until(
                lambda: redis_lists_every_node(cluster, NAMES, port, master),
                30,
                "the new master to list a connection of every node",
            )
        assert every_node_session_is_encrypted(tls_stores, set(NAMES))
