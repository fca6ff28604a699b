"""TLS written once, in a `sentinel://` broker URL, reaches the sentinels too (no server needed).

kombu gives the URL's `ssl_*` parameters to its connections to the master, but redis-py's
`Sentinel` reaches the sentinels with `sentinel_kwargs` only, and Celery's Sentinel result
backend reads no TLS parameter from a `sentinel://` URL at all: `celery_config` passes them
on. The end-to-end proof is `tests/e2e/test_tls.py`; these tests pin what is handed over.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from celery import Celery
from redis.connection import SSLConnection
from redis.sentinel import SentinelManagedConnection

from workers.runtime.app import celery_config
from workers.settings import load_settings
from workers.settings.tls import asks_for_tls

FOLDER = Path(tempfile.gettempdir()) / "failover-celery-config" / "tls dir"
"""Where the URLs' files are (made by `tls_files`: the settings refuse a file that is not
there); a space in the path, as in a real deployment's, is percent-encoded in the URL."""
FILES = {
    "ssl_ca_certs": str(FOLDER / "ca.pem"),
    "ssl_certfile": str(FOLDER / "node.pem"),
    "ssl_keyfile": str(FOLDER / "node.key"),
}
QUERY = "ssl_cert_reqs=required&" + "&".join(f"{key}={quote(path)}" for key, path in FILES.items())
TLS = {"ssl_cert_reqs": ssl.CERT_REQUIRED, **FILES}
SENTINELS = "sentinel://:pw@s1:26379/0?{q};sentinel://:pw@s2:26379/0?{q}"


@pytest.fixture(autouse=True)
def tls_files():
    FOLDER.mkdir(parents=True, exist_ok=True)
    for path in FILES.values():
        Path(path).write_text("not read here: only the configuration is checked")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("FAILOVER_"):
            monkeypatch.delenv(key)


def config_for(broker_url: str, **settings: str) -> dict:
    return celery_config(
        load_settings(broker_url=broker_url, sentinel_master="mymaster", **settings)
    )


def test_tls_parameters_of_a_sentinel_url_reach_the_sentinels_of_the_broker_and_the_backend():
    config = config_for(SENTINELS.format(q=QUERY))
    to_sentinels = {"ssl": True, **TLS, "socket_timeout": 5.0, "socket_connect_timeout": 2.0}
    for options in ("broker_transport_options", "result_backend_transport_options"):
        assert config[options]["sentinel_kwargs"] == to_sentinels
        assert config[options]["master_name"] == "mymaster"
    assert config["redis_backend_use_ssl"] == TLS


def test_celery_s_sentinel_result_backend_opens_only_verified_tls_connections():
    # Given the configuration of a node whose broker URL asks for TLS to the sentinels
    app = Celery("tls-check")
    app.conf.update(config_for(SENTINELS.format(q=QUERY)))
    backend = app.backend
    # When the result backend builds its Sentinel client (which connects lazily)
    sentinel = backend._get_sentinel_instance(**backend.connparams)
    # Then it reaches both sentinels and the master over TLS with the node's certificate
    assert len(sentinel.sentinels) == 2
    for client in sentinel.sentinels:
        pool = client.connection_pool
        assert issubclass(pool.connection_class, SSLConnection)
        assert {key: pool.connection_kwargs[key] for key in TLS} == TLS
    master = sentinel.connection_kwargs["connection_class"]
    assert issubclass(master, SentinelManagedConnection) and issubclass(master, SSLConnection)
    assert {key: sentinel.connection_kwargs[key] for key in TLS} == TLS


def test_plain_sentinels_and_other_brokers_are_handed_no_tls_of_their_own():
    plain = config_for(SENTINELS.format(q="").replace("?", ""))
    assert "sentinel_kwargs" not in plain["broker_transport_options"]
    assert plain["redis_backend_use_ssl"] is None
    app = Celery("plain-check")
    app.conf.update(plain)
    sentinel = app.backend._get_sentinel_instance(**app.backend.connparams)
    assert not issubclass(sentinel.sentinels[0].connection_pool.connection_class, SSLConnection)
    master = sentinel.connection_kwargs.get("connection_class", SentinelManagedConnection)
    assert not issubclass(master, SSLConnection)
    # A rediss:// URL carries its own TLS to its one server
    direct = config_for(f"rediss://redis:6380/0?{QUERY}")
    assert "sentinel_kwargs" not in direct["broker_transport_options"]
    assert direct["redis_backend_use_ssl"] is None
    # A result backend of its own is configured from its own URL, not the broker's
    apart = config_for(SENTINELS.format(q=QUERY), result_backend="redis://results:6379/1")
    assert "sentinel_kwargs" in apart["broker_transport_options"]
    assert "sentinel_kwargs" not in apart["result_backend_transport_options"]
    assert apart["redis_backend_use_ssl"] is None


@pytest.mark.parametrize(
    ("url", "asks"),
    [
        ("redis://h/0", False),
        ("rediss://h/0", True),
        ("redis://h/0?ssl_cert_reqs=required", True),
        ("redis://a/0;rediss://b/0", True),
        ("sentinel://h:26379?ssl_ca_certs=/ca.pem", True),
        ("redis://h/0?not_ssl_x=1", False),
    ],
)
def test_a_url_asks_for_tls_by_its_scheme_or_parameters_kombu_reads(url: str, asks: bool) -> None:
    assert asks_for_tls(url) is asks
