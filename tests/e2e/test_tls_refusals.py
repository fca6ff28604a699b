"""TLS that cannot be verified is refused in one line, exit 2, no secret, nothing changed.

Two nodes run over verified TLS to both stores; then `worker`, `status` and `move` are run
as an operator would with one store's TLS wrong: a CA that did not sign the server's
certificate, a CA file that does not exist, or a server whose certificate names another
host. `status` reads only the database, so a broker it never contacts is checked for its
files alone (a verification it never makes cannot fail).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.pki import kombu_tls, libpq_tls
from tests.support.redis_server import redis_server
from tests.support.servers import Servers, fresh_database
from tests.support.tls import TlsStores, tls_postgres, tls_stores

PASSWORD = "s3cret-pw"
"""A password in every URL tried (trust authentication ignores it): no output may show it."""

COMMANDS = {
    "worker": ("worker", "--node", "z", "--region", "eu"),
    "status": ("status",),
    "move": ("move", "folder_monitor", "--to", "b", "--timeout", "5"),
}


@dataclass(frozen=True)
class Setup:
    cluster: Cluster
    stores: TlsStores
    database: str
    misnamed_database_url: str
    misnamed_broker_url: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("tls-refusals")
    with tls_stores(folder) as stores:
        servers = Servers(stores.database_url("postgres"), stores.broker_url(), embedded=False)
        pki = stores.pki
        with (
            fresh_database(servers) as database_url,
            tls_postgres(pki, misnamed=True) as misnamed_pg,
            redis_server(tls=pki, misnamed=True) as misnamed_redis,
        ):
            cluster = Cluster(folder, database_url, stores.broker_url())
            try:
                cluster.start_live("a", "eu")
                cluster.start_live("b", "eu")
                yield Setup(
                    cluster,
                    stores,
                    database_url.split("/")[-1].split("?")[0],
                    misnamed_pg.url("postgres", f"postgres:{PASSWORD}", libpq_tls(pki)),
                    _with_password(misnamed_redis.url()),
                )
            finally:
                cluster.close()


def _with_password(url: str) -> str:
    return url.replace("://", f"://:{PASSWORD}@", 1)


def _database_url(setup: Setup, ca: Path) -> str:
    stores = setup.stores
    return stores.postgres.url(setup.database, f"postgres:{PASSWORD}", libpq_tls(stores.pki, ca))


def _broker_url(setup: Setup, ca: Path) -> str:
    port = setup.stores.redis.port
    return _with_password(f"rediss://127.0.0.1:{port}/0?{kombu_tls(setup.stores.pki, ca)}")


WRONG = {
    "database, another CA": lambda s: {
        "FAILOVER_DATABASE_URL": _database_url(s, s.stores.pki.other_ca)
    },
    "database, no CA file": lambda s: {
        "FAILOVER_DATABASE_URL": _database_url(s, s.stores.pki.folder / "missing.pem")
    },
    "database, another host name": lambda s: {"FAILOVER_DATABASE_URL": s.misnamed_database_url},
    "broker, another CA": lambda s: {"FAILOVER_BROKER_URL": _broker_url(s, s.stores.pki.other_ca)},
    "broker, no CA file": lambda s: {
        "FAILOVER_BROKER_URL": _broker_url(s, s.stores.pki.folder / "missing.pem")
    },
    "broker, another host name": lambda s: {"FAILOVER_BROKER_URL": s.misnamed_broker_url},
}

NOT_CONTACTED = {("status", "broker, another CA"), ("status", "broker, another host name")}
"""`status` never connects to the broker: it has no verification to fail."""

SAID = {
    "another CA": ("certificate verify failed", "self-signed certificate"),
    "no CA file": ("missing.pem: no such file",),
    "another host name": ("does not match host name", "mismatch"),
}


@pytest.mark.parametrize("wrong", WRONG)
def test_tls_that_does_not_verify_is_refused_in_one_line(setup: Setup, wrong: str) -> None:
    cluster = setup.cluster
    env = WRONG[wrong](setup)
    before = cluster.dump()
    for command, args in COMMANDS.items():
        done = cluster.cli(*args, env=env)
        if (command, wrong) in NOT_CONTACTED:
            assert done.returncode == 0, done.stderr
            continue
        said = done.stderr.strip()
        assert done.returncode == 2, f"{command}: {said}"
        assert len(said.splitlines()) == 1 and "Traceback" not in said, said
        assert said.startswith("failover: "), said
        assert any(words in said for words in SAID[wrong.split(", ")[1]]), said
        assert PASSWORD not in said + done.stdout
    assert cluster.dump() == before
    assert not cluster.query("SELECT 1 FROM server_registry WHERE node_name = 'z'")
