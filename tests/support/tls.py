"""Stores behind verified TLS, with a CA and certificates made for the test (`pki.py`).

`tls_stores` starts a PostgreSQL server with `ssl = on` and a Redis server with only a
`tls-port`, both requiring a client certificate signed by the test's CA, and gives the URLs a
node uses with the standard parameters. Neither server accepts a connection without TLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.pki import Pki, libpq_tls, make_pki
from tests.support.postgres_server import PostgresServer, postgres_server
from tests.support.redis_server import RedisServer, redis_server


@contextmanager
def tls_postgres(pki: Pki, misnamed: bool = False) -> Iterator[PostgresServer]:
    """PostgreSQL that accepts only TLS connections with a client certificate from the CA
    (over TCP; the harness's own Unix-socket connections stay plain)."""
    cert, key = pki.server_pair(misnamed)
    with postgres_server(
        settings={
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "ssl_ca_file": "'ca.crt'",
        },
        hba=[
            "local all all trust",
            "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca",
        ],
        files={
            "server.crt": cert.read_bytes(),
            "server.key": key.read_bytes(),
            "ca.crt": pki.ca.read_bytes(),
        },
    ) as server:
        yield server


@dataclass(frozen=True)
class TlsStores:
    """Both stores behind TLS, the CA that signed them, and a node's URLs for them."""

    pki: Pki
    postgres: PostgresServer
    redis: RedisServer

    def database_url(self, database: str) -> str:
        return self.postgres.url(database, query=libpq_tls(self.pki))

    def broker_url(self, db: int = 0) -> str:
        return self.redis.url(db=db)


@contextmanager
def tls_stores(folder: Path) -> Iterator[TlsStores]:
    """PostgreSQL and Redis behind verified TLS, for the duration of the context."""
    pki = make_pki(folder / "pki")
    with tls_postgres(pki) as postgres, redis_server(tls=pki) as server:
        yield TlsStores(pki, postgres, server)
