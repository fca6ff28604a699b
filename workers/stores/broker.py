"""The Redis transport a node uses: kombu's, with connections that cost fewer round trips.

A node's start opens about ten Redis connections (its consumer, events, remote control, the
beat's publisher, ...), and a node after a broker outage opens them again. redis-py 8 opens
each with a handshake of six round trips: a health-check `PING`, `HELLO 3` (RESP3), `CLIENT
MAINT_NOTIFICATIONS` and two `CLIENT SETINFO` (which Redis 7.0 refuses: three round trips for
nothing), then `SELECT`. At 150 ms that is about a second per connection, several seconds
before a far node can consume its first heartbeat.

These connections speak RESP2, as redis-py did before version 8 and as kombu expects (no
`HELLO`, so no maintenance-notification handshake, which only RESP3 has), send no
`CLIENT SETINFO`, and skip the health check while connecting (a fresh socket needs none):
what is left is `SELECT` and kombu's own `PING` of each new channel. The health checks of
connections in use (kombu's `health_check_interval`) are kept.

`install` makes it the transport of `redis://` and `rediss://` brokers; Sentinel and
Unix-socket brokers keep kombu's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
from kombu.exceptions import OperationalError
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis.maint_notifications import MaintNotificationsConfig

from workers.errors import BrokerUnavailable, ConfigError, first_line
from workers.settings import Settings, mask_url, tls

PROTOCOL = 2


class _Lean:
    """A redis-py connection with the handshake cut to what the node needs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["protocol"] = PROTOCOL
        kwargs["driver_info"] = None
        kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        kwargs.pop("lib_name", None)
        kwargs.pop("lib_version", None)
        super().__init__(*args, **kwargs)

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=False)  # type: ignore[misc]


class LeanConnection(_Lean, redis.Connection):
    """A TCP connection to Redis with the lean handshake."""


class LeanSSLConnection(_Lean, redis.SSLConnection):
    """A TLS connection to Redis with the lean handshake."""


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, opening lean connections."""

    connection_class = LeanConnection
    connection_class_ssl = LeanSSLConnection


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel` above."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"


def install() -> None:
    """Make kombu's `redis` and `rediss` schemes name this transport, in this process.

    Every connection a node, a command or Flower opens to a `redis://` or `rediss://` broker
    is then lean, and a URL keeps its scheme: `Connection.as_uri()`, from which Flower picks
    its broker client for its broker page and queue lengths, says `redis://` and not this
    module's path (Flower answered 404 to those pages). Sentinel and Unix-socket brokers
    keep kombu's own transports.
    """
    TRANSPORT_ALIASES.update(redis=TRANSPORT, rediss=TRANSPORT)


@contextlib.contextmanager
def tls_refused(broker_url: str) -> Iterator[None]:
    """Turn a broker connection that failed TLS verification (a certificate that does not
    verify, a host name that does not match) into one line naming the broker (exit 2)."""
    try:
        yield
    except Exception as error:
        reason = tls.verification_failure(error)
        if reason is None:
            raise
        raise ConfigError(f"TLS to the broker at {mask_url(broker_url)} failed: {reason}") from None


def check_broker(app: Any, settings: Settings, wait: bool) -> None:
    """Connect to the broker once. A certificate that does not verify is refused (exit 2):
    Celery would retry it forever. A broker that is down is refused too, unless `wait`: a node
    waits for its broker (and checks only a TLS one, to start without the extra connection);
    a command that needs it now does not."""
    if wait and not tls.asks_for_tls(settings.broker_url):
        return
    try:
        with tls_refused(settings.broker_url), app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0)
    except (OperationalError, redis.RedisError, OSError) as error:
        if not wait:
            shown = mask_url(settings.broker_url)
            raise BrokerUnavailable(f"broker unavailable at {shown}: {first_line(error)}") from None
