"""TLS to the stores: the files a URL names, and why a connection failed its verification.

Nodes reach PostgreSQL and Redis across data centres, so both URLs may ask for verified TLS
with their standard parameters: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
`sslcrl` and kombu's `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`. A
missing file or a certificate that does not verify is the operator's to fix, not an outage
to wait out: the settings refuse the first, and the commands refuse the second, in one line.
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kombu.utils.url import parse_url

DATABASE_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
BROKER_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
LIBPQ_SPECIAL = {"system"}
"""`sslrootcert=system` (libpq 16) names the system's CAs, not a file."""

DATABASE_TLS_FAILURES = (
    "certificate verify failed",
    "does not match host name",
    "ssl error",
    "could not read root certificate",
    "could not load private key",
    "could not open certificate",
)
"""How libpq words a failed TLS verification or unusable TLS files (psycopg passes its text)."""


def file_problems(url: str, parameters: tuple[str, ...]) -> list[str]:
    """Each TLS file the URL (or each `;`-separated URL) names that cannot be read."""
    problems = []
    for part in url.split(";"):
        for key, value in parse_qsl(urlsplit(part).query):
            if key in parameters and value not in LIBPQ_SPECIAL:
                problem = _unreadable(value)
                if problem:
                    problems.append(f"{key} {value}: {problem}")
    return list(dict.fromkeys(problems))


def _unreadable(path: str) -> str | None:
    if not os.path.exists(path):
        return "no such file"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def url_tls(url: str) -> dict[str, Any]:
    """The TLS parameters of a broker URL (its first entry), as kombu reads them, or none.

    kombu already uses them for its own connections; as `broker_use_ssl` they also reach
    what reads Celery's configuration instead of the URL: Flower's broker client.
    """
    return dict(parse_url(url.split(";", 1)[0]).get("ssl") or {})


def asks_for_tls(broker_url: str) -> bool:
    """Whether any entry of a broker URL asks for TLS (`rediss://`, or `ssl_*` parameters)."""
    return any(
        part.startswith("rediss://") or bool(url_tls(part)) for part in broker_url.split(";")
    )


def verification_failure(error: BaseException) -> str | None:
    """Why a broker connection failed TLS verification (redis-py keeps the `ssl` error as
    its cause), or None when it failed for another reason (the server being down)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or seen)
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    return None


def database_failure(message: str) -> bool:
    """Whether libpq's message says TLS failed (verification, host name, unusable files)."""
    lowered = message.lower()
    return any(marker in lowered for marker in DATABASE_TLS_FAILURES)
