"""A real PgBouncer in transaction mode in front of the test PostgreSQL, when installed.

`.ci/run` installs Debian's `pgbouncer` when it is missing; elsewhere the tests that need it
are skipped. PgBouncer refuses to run as root, so it drops to `nobody` (`-u`) and keeps its
files in a temporary folder under the system's temp folder that anyone may write.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
ignore_startup_parameters = extra_float_digits
logfile = {folder / "pgbouncer.log"}
pidfile = {folder / "pgbouncer.pid"}
"""
    )
    user = make_url(database_url).username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    return config


@contextmanager
def pgbouncer(database_url: str) -> Iterator[str]:
    """Run PgBouncer in front of `database_url`'s server; yield the same URL through it.

    PgBouncer reaches the server through a plain TCP proxy of this process, so that it needs
    no access to an embedded server's private socket folder.
    """
    assert BINARY is not None, "pgbouncer is not installed"
    with tempfile.TemporaryDirectory(prefix="failover-pgbouncer-") as name:
        folder = Path(name)
        os.chmod(folder, 0o777)
        yield from _run(folder, database_url)


def _run(folder: Path, database_url: str) -> Iterator[str]:
    server = FaultProxy(database_target(database_url))
    port = _free_port()
    config = _config(folder, database_url, server.port, port)
    for path in folder.iterdir():
        os.chmod(path, 0o666)
    command = [BINARY, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, process)
        url = make_url(database_url).set(host="127.0.0.1", port=port, query={})
        yield url.render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=10)
        server.close()


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
