"""The nemesis's own stores, so that store faults are the real thing, not stand-ins.

- PostgreSQL: a primary and an asynchronous standby (`tests.support.replicas`), reached
  through one address of their own (a `FaultProxy` playing a virtual IP), which follows the
  primary when the standby is promoted. A restart stops and starts the primary; a promotion
  first holds the standby back, so the writes of the last moments are lost with the old
  primary, then rewinds the old primary into the new standby.
- Redis: a `redis-server` of its own, without persistence: a restart loses every message,
  and FLUSHALL is the whole server's.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.proxy import FaultProxy
from tests.support.replicas import PostgresPair, free_port, postgres_pair, redis_server_binary
from workers.settings import load_settings
from workers.stores.database import upgrade_schema

DATABASE = "nemesis"


class OwnRedis:
    """A redis-server on a fixed port that a fault may stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        arguments += ["--appendonly", "no", "--dir", str(self.folder)]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(redis_server_binary()), *arguments], stdout=log, stderr=subprocess.STDOUT
            )
        client = self.client()
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("the nemesis's redis-server did not start")

    def stop(self) -> None:
        """Stop at once, saving nothing (as a crash of a server without persistence)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


class OwnStores:
    """PostgreSQL primary + asynchronous standby behind one address, and a Redis server."""

    def __init__(self, folder: Path, pair: PostgresPair) -> None:
        self.folder = folder
        self.pair = pair
        self.redis = OwnRedis(folder)
        self.address: FaultProxy | None = None

    def start(self) -> None:
        self.pair.create_database(DATABASE)
        self.address = FaultProxy(("127.0.0.1", self.pair.primary.port))
        upgrade_schema(load_settings(database_url=self.database_url))
        self.redis.start()

    @property
    def database_url(self) -> str:
        assert self.address is not None
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.address.port}/{DATABASE}"

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def restart_database(self, seconds: float) -> None:
        """Stop the primary (fast: every session ends), wait, start it again."""
        self.pair._stop(self.pair.primary, "fast")
        time.sleep(seconds)
        self.pair._start(self.pair.primary)

    def promote_without_last_writes(self, behind: float) -> None:
        """Hold the standby back for `behind` seconds of writes, crash the primary, promote
        the standby (the address follows it), and rewind the old primary to follow it."""
        standby = self.pair.standby
        self.pair.query(standby, "ALTER SYSTEM SET primary_conninfo = ''")
        self.pair.query(standby, "SELECT pg_reload_conf()")
        time.sleep(behind)
        self.pair.kill_primary()
        self.pair.promote_standby()
        assert self.address is not None
        self.address.retarget(("127.0.0.1", self.pair.primary.port))
        self.pair.rejoin_old_primary()

    def restart_broker(self, seconds: float) -> None:
        self.redis.stop()
        time.sleep(seconds)
        self.redis.start()

    def flushall(self) -> None:
        self.redis.client().flushall()

    def close(self) -> None:
        self.redis.stop()
        if self.address is not None:
            self.address.close()


@contextlib.contextmanager
def own_stores() -> Iterator[OwnStores]:
    """Start the nemesis's own stores in a temporary folder; stop and remove them after."""
    with (
        tempfile.TemporaryDirectory(prefix="failover-nemesis-stores-") as folder,
        postgres_pair(synchronous=False) as pair,
    ):
        stores = OwnStores(Path(folder), pair)
        try:
            stores.start()
            yield stores
        finally:
            stores.close()
