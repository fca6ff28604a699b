"""A real PgBouncer in transaction mode in front of the test PostgreSQL, when installed.

`.ci/run` installs Debian's `pgbouncer` when it is missing; elsewhere the tests that need it
are skipped. PgBouncer refuses to run as root, so it drops to `nobody` (`-u`) and keeps its
files in a temporary folder under the system's temp folder that anyone may write.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.proxy import FaultProxy
from tests.support.servers import database_target

BINARY = shutil.which("pgbouncer") or next(
    (path for path in ("/usr/sbin/pgbouncer",) if Path(path).exists()), None
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(folder: Path, database_url: str, server_port: int, port: int) -> Path:
    config = folder / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
server_reset_query =
server_login_retry = 1
ignore_startup_parameters = extra_float_digits
logfile = {folder / "pgbouncer.log"}
pidfile = {folder / "pgbouncer.pid"}
"""
    )
    user = make_url(database_url).username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    return config


@dataclass
class Bouncer:
    """A running PgBouncer: its URL (the database's, through it), and ways to act on it as
    a promotion would (repoint it at another server, or stop it with its host)."""

    url: str
    folder: Path
    process: subprocess.Popen[bytes]
    server: FaultProxy

    def repoint(self, target: tuple[str, int]) -> None:
        """Point PgBouncer at another server (the new primary) and reload it, as a cluster
        manager's promotion callback does: new server connections go there."""
        self.server.close()
        self.server = FaultProxy(target)
        config = self.folder / "pgbouncer.ini"
        lines = config.read_text().splitlines()
        lines[1] = f"* = host=127.0.0.1 port={self.server.port}"
        config.write_text("\n".join(lines) + "\n")
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Stop PgBouncer (its host died): its port refuses connections."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextmanager
def pgbouncer(database_url: str) -> Iterator[str]:
    """Run PgBouncer in front of `database_url`'s server; yield the same URL through it."""
    with running_pgbouncer(database_url) as bouncer:
        yield bouncer.url


@contextmanager
def running_pgbouncer(database_url: str) -> Iterator[Bouncer]:
    """Run PgBouncer in front of `database_url`'s server.

    PgBouncer reaches the server through a plain TCP proxy of this process, so that it needs
    no access to an embedded server's private socket folder.
    """
    assert BINARY is not None, "pgbouncer is not installed"
    with tempfile.TemporaryDirectory(prefix="failover-pgbouncer-") as name:
        folder = Path(name)
        os.chmod(folder, 0o777)
        yield from _run(folder, database_url)


def _run(folder: Path, database_url: str) -> Iterator[Bouncer]:
    server = FaultProxy(database_target(database_url))
    port = _free_port()
    config = _config(folder, database_url, server.port, port)
    for path in folder.iterdir():
        os.chmod(path, 0o666)
    command = [BINARY, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = make_url(database_url).set(host="127.0.0.1", port=port, query={})
    bouncer = Bouncer(url.render_as_string(hide_password=False), folder, process, server)
    try:
        _wait_listening(port, process)
        yield bouncer
    finally:
        bouncer.stop()
        bouncer.server.close()


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"pgbouncer exited: {said}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("pgbouncer did not listen within 10 s")
