"""One PostgreSQL server of a test's own, on loopback: for settings the shared one lacks.

TLS (`ssl = on` with the test's certificates) and roles (which are server-wide, so a test
that creates `failover_owner` and `failover_node` must not share a server with another) need
a server the test configures and then throws away. It is the primary of `PostgresPair`
without its standby, so it runs as `postgres` when the tests run as root, like the pair.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.replicas import (
    PgMember,
    PostgresPair,
    _write_owned,
    running,
)


class PostgresServer(PostgresPair):
    """A single server (the pair's `db1`) with extra settings, client rules and files."""

    def __init__(
        self,
        folder: Path,
        settings: Mapping[str, str],
        hba: Sequence[str],
        files: Mapping[str, bytes],
    ) -> None:
        super().__init__(folder, synchronous=False)
        self.members = self.members[:1]
        self.extra_settings = dict(settings)
        self.hba = list(hba)
        self.files = dict(files)

    @property
    def port(self) -> int:
        return self.primary.port

    def url(self, database: str, user: str = "postgres", query: str = "") -> str:
        """The SQLAlchemy URL of this server as `user`, with a libpq query string if given."""
        suffix = f"?{query}" if query else ""
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}{suffix}"

    def admin_url(self, database: str) -> str:
        """The SQLAlchemy URL of `postgres` over the server's Unix socket (whatever the rules
        for TCP say: the harness's way in)."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.folder}&port={self.port}"

    def conninfo(self, member: PgMember, database: str = "postgres") -> str:
        """As `postgres` over the Unix socket, whatever the rules for TCP say."""
        return f"host={self.folder} port={member.port} user=postgres dbname={database}"

    def start(self) -> None:
        """initdb, write the files and rules, start; wait until it answers."""
        self._init_primary()
        datadir = self.primary.datadir
        for name, content in self.files.items():
            _write_owned(datadir / name, "", self.account)
            (datadir / name).write_bytes(content)
            os.chmod(datadir / name, 0o600)
        if self.hba:
            _write_owned(datadir / "pg_hba.conf", "\n".join(self.hba) + "\n", self.account)
        self._start(self.primary)

    def restart(self) -> None:
        """Stop the server (fast: every connection is cut) and start it again on its port."""
        self._stop(self.primary, "fast")
        self._start(self.primary)

    def _server_config(self) -> str:
        extra = "".join(f"{key} = {value}\n" for key, value in self.extra_settings.items())
        return super()._server_config() + extra


@contextmanager
def postgres_server(
    settings: Mapping[str, str] | None = None,
    hba: Sequence[str] = (),
    files: Mapping[str, bytes] | None = None,
) -> Iterator[PostgresServer]:
    """A running server of the test's own; stopped and removed at exit.

    `settings` are postgresql.conf lines (values as PostgreSQL reads them: quote strings),
    `hba` replaces pg_hba.conf when given (keep `local all postgres trust`: the harness's own
    queries use the Unix socket), and `files` are
    written into the data folder, readable only by the server (key files must be).
    """
    with running(PostgresServer, "failover-pg-", settings or {}, hba, files or {}) as server:
        yield server
