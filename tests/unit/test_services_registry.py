"""The service registry: custom services from the TOML file and entry points, their checks,
and the names that placement and commands accept."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from workers import services
from workers.errors import ConfigError
from workers.fence import local_state
from workers.services.app_script import AppScriptService
from workers.services.custom import CustomService
from workers.services.folder_monitor import FolderMonitorService
from workers.settings import load_settings, require_service


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("FAILOVER_"):
            monkeypatch.delenv(key)


def toml(tmp_path, body: str):
    path = tmp_path / "failover.toml"
    path.write_text(textwrap.dedent(body))
    return path


def module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_toml_service_is_registered_after_the_built_ins(tmp_path, monkeypatch):
    module(tmp_path, monkeypatch, "team_a", "def run(fence):\n    return fence.epoch\n")
    settings = load_settings(
        toml(
            tmp_path,
            """
            [services.ledger_rollup]
            handler = "team_a:run"
            interval = 30

            [services.cache_warm]
            handler = "team_a:run"

            [placement.ledger_rollup]
            preferred_regions = ["r2"]
            """,
        )
    )
    registry = services.services_for(settings)
    assert list(registry) == ["folder_monitor", "app_script", "cache_warm", "ledger_rollup"]
    assert isinstance(registry["folder_monitor"], FolderMonitorService)
    assert isinstance(registry["app_script"], AppScriptService)
    rollup = registry["ledger_rollup"]
    assert isinstance(rollup, CustomService)
    assert (rollup.spec, rollup.interval) == ("team_a:run", 30.0)
    assert registry["cache_warm"].interval is None  # type: ignore[attr-defined]
    assert settings.policy().placement("ledger_rollup").preferred_regions == ("r2",)
    services.check_all(settings)
    assert all(isinstance(s, services.SingletonService) for s in registry.values())


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('[services.x_y]\nhandler = "not a spec"\n', "must be package.module:function"),
        ("[services.x_y]\ninterval = -1\n", "greater than 0"),
        ('[services.folder_monitor]\nhandler = "a:b"\n', "is a built-in service"),
        ('[services.Bad-Name]\nhandler = "a:b"\n', "lowercase snake_case"),
        ('[services.x_y]\nhandler = "a:b"\ncron = "* * * * *"\n', "Extra inputs"),
        ("[placement.nosuch]\nfailback = true\n", "unknown service nosuch"),
    ],
)
def test_bad_service_settings_are_one_line_errors(tmp_path, body, named):
    with pytest.raises(ConfigError) as error:
        load_settings(toml(tmp_path, body))
    assert named in str(error.value) and "\n" not in str(error.value)


def test_a_bad_handler_spec_stops_the_worker_with_one_line_and_exit_2(tmp_path):
    path = toml(tmp_path, '[services.ledger_rollup]\nhandler = "team_jobs.roll_up"\n')
    done = subprocess.run(
        [sys.executable, "-m", "workers", "--config", str(path), "worker", "--node", "a"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "FAILOVER_SERVICES.LEDGER_ROLLUP.HANDLER" in done.stderr
    assert "must be package.module:function" in done.stderr


@pytest.mark.parametrize(
    ("source", "handler", "named"),
    [
        ("", "no_such_team_module:run", "cannot be imported: ModuleNotFoundError"),
        ("def run(fence):\n    pass\n", "team_b:missing", "cannot be imported: AttributeError"),
        ("run = 42\n", "team_b:run", "is not callable"),
        ("def run():\n    pass\n", "team_b:run", "must take one argument (the fence)"),
        ("raise RuntimeError('boom\\nsecond line')\n", "team_b:run", "RuntimeError: boom"),
    ],
)
def test_a_handler_that_cannot_run_fails_the_start_check(
    tmp_path, monkeypatch, source, handler, named
):
    sys.modules.pop("team_b", None)
    module(tmp_path, monkeypatch, "team_b", source)
    settings = load_settings(toml(tmp_path, f'[services.ledger_rollup]\nhandler = "{handler}"\n'))
    with pytest.raises(ConfigError) as error:
        services.check_all(settings)
    message = str(error.value)
    assert message.startswith("service ledger_rollup: handler") and named in message
    assert "\n" not in message


def test_an_entry_point_declares_a_service_and_a_table_gives_it_an_interval(tmp_path, monkeypatch):
    module(tmp_path, monkeypatch, "team_c", "def sync(fence):\n    return 'synced'\n")
    dist = tmp_path / "team_c-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: team-c\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[celery_failover.services]\nnightly_sync = team_c:sync\n"
    )
    settings = load_settings(
        toml(
            tmp_path,
            "[services.nightly_sync]\ninterval = 5\n\n[placement.nightly_sync]\nfailback = true\n",
        )
    )
    assert "nightly_sync" in settings.service_names()
    found = services.services_for(settings)["nightly_sync"]
    assert isinstance(found, CustomService)
    assert (found.spec, found.interval) == ("team_c:sync", 5.0)
    services.check_all(settings)


def test_a_table_with_neither_handler_nor_entry_point_is_a_config_error(tmp_path):
    settings = load_settings(toml(tmp_path, "[services.orphan_job]\ninterval = 5\n"))
    with pytest.raises(ConfigError, match="service orphan_job: no handler"):
        services.check_all(settings)


def test_commands_accept_any_service_the_database_knows():
    require_service("ledger_rollup", ["app_script", "folder_monitor", "ledger_rollup"])
    with pytest.raises(ConfigError) as error:
        require_service("nosuch", ["app_script", "folder_monitor", "ledger_rollup"])
    assert str(error.value) == (
        "unknown service 'nosuch': use one of app_script, folder_monitor, ledger_rollup"
    )


def test_a_turn_comes_at_most_once_per_interval(tmp_path):
    incarnation = "test-turns-" + tmp_path.name
    try:
        assert local_state.take_turn(incarnation, "service.x", 3600)
        assert not local_state.take_turn(incarnation, "service.x", 3600)
        assert local_state.take_turn(incarnation, "service.x", 0.0)
        assert local_state.take_turn(incarnation, "service.y", None)
        assert local_state.take_turn(incarnation, "service.y", None)
    finally:
        local_state.forget(incarnation)


def test_only_owned_services_that_read_at_each_beat_send_a_read_with_the_ticks(tmp_path):
    from workers.services.app_script import SCHEDULES_READ

    # Given scripts, and a service of a team's own that reads nothing with the ticks
    module_path = tmp_path / "team_reads.py"
    module_path.write_text("def run(fence):\n    return None\n")
    body = '[scripts.report]\nargv = ["true"]\ninterval = 5\n\n'
    body += '[services.rollup]\nhandler = "team_reads:run"\n'
    settings = load_settings(toml(tmp_path, body))
    # Then the script runner's owner reads its schedules with the ticks, and nobody else
    reads = services.tick_reads(settings, ["folder_monitor", "rollup", "app_script"])
    assert [(type(reader), read) for reader, read in reads] == [(AppScriptService, SCHEDULES_READ)]
    assert services.tick_reads(settings, ["folder_monitor", "rollup"]) == []
    # And without scripts, the script runner reads nothing either
    assert services.tick_reads(load_settings(), ["app_script"]) == []
