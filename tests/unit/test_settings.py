"""Settings: precedence, validation at load, timing rules, masked secrets."""

from __future__ import annotations

import os

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
        sentinel_master="mymaster",
    )
    shown = str(loaded.describe()) + repr(loaded)
    assert "s3cret" not in shown and "r3dis" not in shown
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


def test_placement_from_toml_becomes_the_decision_policy(tmp_path):
    config = tmp_path / "f.toml"
    config.write_text(
        '[placement.folder_monitor]\npreferred_nodes = ["a", "b"]\nfailback = true\n'
        'failback_dwell = 60\nfailback_window = "22:00-04:00"\n'
    )
    placement = load_settings(config).policy().placement("folder_monitor")
    assert placement.preferred_nodes == ("a", "b")
    assert (placement.failback, placement.failback_dwell) == (True, 60)
    assert placement.failback_window is not None
    assert load_settings(config).policy().placement("app_script").failback is False


@pytest.mark.parametrize(
    ("placement", "named"),
    [
        ('{"nosuch": {}}', "unknown service"),
        ('{"app_script": {"failback_window": "25:00-01:00"}}', "HH:MM-HH:MM"),
        ('{"app_script": {"preferred_node": ["a"]}}', "PREFERRED_NODE"),
    ],
)
def test_bad_placement_is_refused_at_load(monkeypatch, placement, named):
    monkeypatch.setenv("FAILOVER_PLACEMENT", placement)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_region_lease_timeouts_obey_the_timing_rule_and_apply_to_their_region():
    with pytest.raises(ConfigError, match=r"REGION_LEASE_TIMEOUT\[far\]"):
        load_settings(region_lease_timeout={"far": 1.0})
    far = load_settings(region="far", region_lease_timeout={"far": 6.0})
    assert far.node_lease_timeout() == 6.0
    assert (
        load_settings(region="near", region_lease_timeout={"far": 6.0}).node_lease_timeout() == 3.0
    )


def test_since_accepts_durations_and_iso_times():
    from datetime import UTC, datetime

    from workers.operations.status import parse_since

    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == datetime(2026, 1, 2, 11, 58, 30, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
    assert parse_since("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ConfigError):
        parse_since("soon", now)


def test_a_sentinel_broker_needs_its_master_name():
    url = "sentinel://:pw@s1:26379;sentinel://:pw@s2:26379"
    with pytest.raises(ConfigError, match="FAILOVER_SENTINEL_MASTER"):
        load_settings(broker_url=url)
    from workers.runtime.app import celery_config

    config = celery_config(load_settings(broker_url=url, sentinel_master="mymaster"))
    assert config["broker_transport_options"]["master_name"] == "mymaster"
    assert config["result_backend"] == url


def test_a_toml_syntax_error_names_the_file_line_and_column(tmp_path):
    config = tmp_path / "failover.toml"
    config.write_text('region = "eu"\n\nlease_timeout = = 3\n')
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    message = str(error.value)
    assert message.startswith(f"configuration error: {config} line 3, column 17: ")
    assert "\n" not in message


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    config = tmp_path / "failover.toml"
    config.write_bytes(b'region = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(config)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_file_is_a_config_error(tmp_path):
    config = tmp_path / "failover.toml"
    config.write_text('region = "eu"\n')
    config.chmod(0)
    with pytest.raises(ConfigError, match="Permission denied"):
        load_settings(config)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=s3cret&connect_timeout=2",
            "postgresql://u@h/db?sslmode=require&sslpassword=***&connect_timeout=2",
        ),
        ("redis://h:6379/0?Password=s3cret", "redis://h:6379/0?Password=***"),
        ("redis+socket:///run/r.sock?password=s3cret", "redis+socket:///run/r.sock?password=***"),
        ("postgresql://u:s3cret@h/db?password=s3cret", "postgresql://u:***@h/db?password=***"),
        ("postgresql://u@h/db?passwordless=1", "postgresql://u@h/db?passwordless=1"),
    ],
)
def test_a_password_in_the_query_string_is_masked(url, shown):
    assert mask_url(url) == shown


def test_script_env_values_are_masked_when_settings_are_shown(tmp_path):
    config = tmp_path / "f.toml"
    config.write_text('[scripts.report]\nargv = ["report"]\nenv = { API_TOKEN = "t0ken" }\n')
    loaded = load_settings(config)
    shown = loaded.describe()
    assert shown["scripts"]["report"]["env"] == {"API_TOKEN": "***"}
    assert "t0ken" not in str(shown)
    assert loaded.scripts["report"].env == {"API_TOKEN": "t0ken"}


def test_a_failover_variable_cannot_be_passed_through_to_children(tmp_path):
    config = tmp_path / "f.toml"
    config.write_text('child_env_passthrough = ["PYTHONPATH", "FAILOVER_DATABASE_URL"]\n')
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert "FAILOVER_CHILD_ENV_PASSTHROUGH" in str(error.value)
    assert "FAILOVER_DATABASE_URL" in str(error.value) and "\n" not in str(error.value)
    assert load_settings(child_env_passthrough=["PYTHONPATH"]).child_env_passthrough == [
        "PYTHONPATH"
    ]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            {"database_url": "postgresql://u:pw@h/db?sslmode=verify-full&sslrootcert={missing}"},
            "FAILOVER_DATABASE_URL: sslrootcert {missing}: no such file",
        ),
        (
            {"broker_url": "rediss://:pw@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs={missing}"},
            "FAILOVER_BROKER_URL: ssl_ca_certs {missing}: no such file",
        ),
        (
            {"broker_url": "sentinel://:pw@h:26379/0?ssl_certfile={missing};sentinel://h2:26379"},
            "FAILOVER_BROKER_URL: ssl_certfile {missing}: no such file",
        ),
    ],
)
def test_a_tls_file_that_cannot_be_read_is_refused_by_name_without_the_password(
    tmp_path, flags, named
):
    missing = tmp_path / "ca.pem"
    flags = {key: value.format(missing=missing) for key, value in flags.items()}
    with pytest.raises(ConfigError) as refused:
        load_settings(sentinel_master="m", **flags)
    assert named.format(missing=missing) in str(refused.value)
    assert "pw" not in str(refused.value)
    missing.write_text("a CA")
    load_settings(sentinel_master="m", **flags)


def test_libpq_s_system_root_certificates_are_not_a_file():
    load_settings(database_url="postgresql://u@h/db?sslmode=verify-full&sslrootcert=system")
