"""Settings: precedence, validation at load, timing rules, masked secrets."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.settings import load_settings, mask_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("FAILOVER_"):
            monkeypatch.delenv(key)


def test_flag_beats_environment_beats_file_beats_default(tmp_path, monkeypatch):
    config = tmp_path / "failover.toml"
    config.write_text('region = "file"\nheartbeat_interval = 2.0\nlease_timeout = 9.0\n')
    monkeypatch.setenv("FAILOVER_HEARTBEAT_INTERVAL", "1.5")
    loaded = load_settings(config, lease_timeout=8.0)
    assert loaded.region == "file"  # file beats default
    assert loaded.heartbeat_interval == 1.5  # environment beats file
    assert loaded.lease_timeout == 8.0  # flag beats everything
    assert loaded.cross_region_delay == 1.0  # default


def test_config_file_named_by_environment(tmp_path, monkeypatch):
    config = tmp_path / "f.toml"
    config.write_text('region = "eu-west"\n')
    monkeypatch.setenv("FAILOVER_CONFIG", str(config))
    assert load_settings().region == "eu-west"


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


def test_unknown_key_in_file_is_refused(tmp_path):
    config = tmp_path / "f.toml"
    config.write_text("heartbeat_intervall = 1\n")
    with pytest.raises(ConfigError, match="FAILOVER_HEARTBEAT_INTERVALL"):
        load_settings(config)


def test_lease_too_short_for_the_heartbeat_names_the_settings():
    with pytest.raises(ConfigError) as error:
        load_settings(heartbeat_interval=2.0, lease_timeout=3.0)
    message = str(error.value)
    assert "FAILOVER_LEASE_TIMEOUT" in message and "FAILOVER_HEARTBEAT_INTERVAL" in message
    assert "FAILOVER_DATABASE_TIMEOUT" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"node_name": "Bad Name"}, "FAILOVER_NODE_NAME"),
        ({"database_url": "mysql://x"}, "FAILOVER_DATABASE_URL"),
        ({"broker_url": "amqp://x"}, "FAILOVER_BROKER_URL"),
        ({"heartbeat_interval": -1}, "FAILOVER_HEARTBEAT_INTERVAL"),
    ],
)
def test_bad_values_name_their_variable(flags, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(**flags)


def test_plain_postgresql_urls_get_the_psycopg_driver():
    loaded = load_settings(database_url="postgresql://u@h/db")
    assert loaded.database_url == "postgresql+psycopg://u@h/db"


def test_passwords_are_masked_wherever_settings_are_shown():
    loaded = load_settings(
        database_url="postgresql+psycopg://app:s3cret@db:5432/failover",
        broker_url="sentinel://:r3dis@s1:26379;sentinel://:r3dis@s2:26379",
    )
    shown = str(loaded.describe()) + repr(loaded)
    assert "s3cret" not in shown and "r3dis" not in shown
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
