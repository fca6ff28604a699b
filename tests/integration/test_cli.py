"""The `failover` command as an operator runs it: exit codes, one-line errors, JSON status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.registry import add_node, give
from tests.support.servers import HEAD_REVISION
from workers.stores import ownership
from workers.stores.database import transaction

CHECKOUT = Path(__file__).parents[2]


def failover(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAILOVER_")}
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=cwd,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_status_json_has_the_documented_shape(settings, database_url):
    add_node(settings, "a", region="eu")
    give(settings, "folder_monitor", "a")
    result = failover("status", "--json", FAILOVER_DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status) >= {"nodes", "services", "events"}
    (node,) = status["nodes"]
    assert {
        "name",
        "region",
        "active",
        "last_heartbeat_age_s",
        "lease_left_s",
        "draining",
        "incarnation",
        "address",
    } <= set(node)
    assert (node["name"], node["region"], node["active"]) == ("a", "eu", True)
    services = {s["service"]: s for s in status["services"]}
    assert (services["folder_monitor"]["owner"], services["folder_monitor"]["epoch"]) == ("a", 1)
    assert services["app_script"]["owner"] is None
    assert status["events"][0]["to"] == "a"


def test_status_table_names_owners(settings, database_url):
    add_node(settings, "a")
    give(settings, "app_script", "a")
    result = failover("status", FAILOVER_DATABASE_URL=database_url, COLUMNS="200")
    assert result.returncode == 0
    assert "app_script" in result.stdout and "startup" in result.stdout


def test_unreachable_database_is_one_line_exit_2_without_the_password():
    result = failover("status", FAILOVER_DATABASE_URL="postgresql://app:s3cret@127.0.0.1:1/x")
    message = assert_one_line_error(result, 2)
    assert "database unavailable" in message and "s3cret" not in message


def test_database_without_schema_says_to_upgrade(servers):
    result = failover("status", FAILOVER_DATABASE_URL=servers.admin_database_url)
    if result.returncode == 0:
        pytest.skip("the shared database already holds a failover schema")
    assert "failover db upgrade" in assert_one_line_error(result, 2)


def test_an_old_schema_says_to_upgrade(servers):
    from tests.support.servers import fresh_database
    from workers.settings import load_settings
    from workers.stores.database import upgrade_schema

    with fresh_database(servers, revision="0001") as url:
        result = failover("status", FAILOVER_DATABASE_URL=url)
        assert "older than this version: run `failover db upgrade`" in assert_one_line_error(
            result, 2
        )
        upgrade_schema(load_settings(database_url=url))
        assert failover("status", FAILOVER_DATABASE_URL=url).returncode == 0


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["status"], {}, "FAILOVER_DATABASE_URL is not set"),
        (["status"], {"FAILOVER_LEASE_TIMEOUT": "0.5"}, "FAILOVER_LEASE_TIMEOUT"),
        (["status"], {"FAILOVER_HEARTBEAT_INTERVAL": "soon"}, "FAILOVER_HEARTBEAT_INTERVAL"),
        (["--config", "/nonexistent.toml", "status"], {}, "no such file"),
        (
            ["worker", "--node", "Bad Name"],
            {"FAILOVER_DATABASE_URL": "postgresql://x@h/d"},
            "FAILOVER_NODE_NAME",
        ),
    ],
)
def test_bad_configuration_is_one_line_exit_2(args, env, named):
    assert named in assert_one_line_error(failover(*args, **env), 2)


def test_a_toml_syntax_error_is_one_line_exit_2_naming_file_line_and_column(tmp_path):
    config = tmp_path / "failover.toml"
    config.write_text('region = "eu"\nlease_timeout = 3\nnode_name = = "a"\n')
    message = assert_one_line_error(failover("--config", str(config), "status"), 2)
    assert f"configuration error: {config} line 3, column 13: " in message
    message = assert_one_line_error(failover("status", FAILOVER_CONFIG=str(config)), 2)
    assert f"{config} line 3, column 13" in message


MARKUP = "[/x] [bold]oops[/bold] [link=http://evil]here[/link]"


def test_stored_text_that_looks_like_markup_is_shown_literally(settings, database_url):
    # Given a manual move and a graceful stop whose reason, actor and verdict look like markup
    a = add_node(settings, "a")
    b = add_node(settings, "b")
    give(settings, "folder_monitor", "a")
    with transaction(settings) as connection:
        refusal, _epoch = ownership.move_here(
            connection, b, "folder_monitor", f"ops{MARKUP}", MARKUP
        )
    assert refusal is None
    with transaction(settings) as connection:
        ownership.release_services(connection, a, why=MARKUP)
    env = {"FAILOVER_DATABASE_URL": database_url, "COLUMNS": "400"}
    # When status and history are shown as tables, Then they succeed and show the text as is
    for command in (["status"], ["history"], ["history", "folder_monitor"]):
        result = failover(*command, **env)
        assert result.returncode == 0, result.stderr
        assert MARKUP in result.stdout, result.stdout
    assert f"stopped: {MARKUP}" in failover("status", **env).stdout


def test_unknown_command_is_a_usage_error():
    result = failover("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_db_upgrade_works_from_a_wheel_installed_outside_the_checkout(tmp_path, database_url):
    # Given the package built as a wheel and installed into a folder away from the checkout
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(CHECKOUT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("celery_failover-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    env = {"PYTHONPATH": str(site), "FAILOVER_DATABASE_URL": database_url}
    where = failover("--help", cwd=tmp_path, **env)
    assert where.returncode == 0
    located = subprocess.run(
        [sys.executable, "-c", "import workers.stores.database as d; print(d.migrations_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
    ).stdout.strip()
    assert located.startswith(str(site)), located
    # When db upgrade runs from there (twice), Then it succeeds and is idempotent
    for _ in range(2):
        result = failover("db", "upgrade", cwd=tmp_path, **env)
        assert result.returncode == 0, result.stderr
        assert f"revision {HEAD_REVISION}" in result.stdout
