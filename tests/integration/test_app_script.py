"""The script runner on real PostgreSQL and real processes: slots, timeouts, fencing."""

from __future__ import annotations

import sys
import time

import psutil
import pytest
from sqlalchemy import text

from tests.support.registry import add_node, give
from workers.errors import ConfigError, StaleEpoch
from workers.fence.fencing import Fence
from workers.services import app_script
from workers.settings import ScriptSettings, Settings
from workers.stores.database import transaction

SERVICE = "app_script"


def runs(settings: Settings) -> list:
    with transaction(settings) as connection:
        return list(connection.execute(text("SELECT * FROM script_run ORDER BY id")))


def owner(settings: Settings, name: str = "a") -> Fence:
    me = add_node(settings, name, lease=30)
    return Fence(SERVICE, me, give(settings, SERVICE, name))


def with_scripts(settings: Settings, **scripts: ScriptSettings) -> Settings:
    return settings.model_copy(update={"scripts": scripts})


def tick(settings, fence):
    """What the owner's service work does for scripts: take the due runs, then run them."""
    runs = app_script.take_due_runs(settings, fence)
    for name, run_id in runs:
        app_script.run_scheduled(settings, name, fence, run_id)
    return [name for name, _ in runs]


def test_a_scheduled_slot_runs_once_and_slots_missed_while_away_run_once(settings, tmp_path):
    marker = tmp_path / "ran.log"
    script = ScriptSettings(
        argv=[sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"], interval=0.5
    )
    settings = with_scripts(settings, report=script)
    fence = owner(settings)
    assert tick(settings, fence) == []  # first sight: the schedule starts now
    time.sleep(0.6)
    assert tick(settings, fence) == ["report"]
    assert tick(settings, fence) == []  # the same slot never runs twice
    time.sleep(2.1)  # four slots pass with nobody running them
    assert tick(settings, fence) == ["report"]
    assert marker.read_text() == "xx"
    assert [(r.trigger, r.status, r.exit_code) for r in runs(settings)] == [
        ("schedule", "succeeded", 0),
        ("missed", "succeeded", 0),
    ]


def test_a_hanging_script_is_killed_at_its_timeout_with_its_children(settings, tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('started', flush=True); time.sleep(60)"
    )
    settings = with_scripts(
        settings, hang=ScriptSettings(argv=[sys.executable, "-c", code], timeout=1.5)
    )
    outcome = app_script.run_now(settings, "hang", owner(settings))
    assert outcome["status"] == "timeout"
    assert "started" in outcome["output_tail"]
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert [(r.status, r.trigger) for r in runs(settings)] == [("timeout", "manual")]


def test_a_stale_owners_run_is_refused_before_it_starts(settings, tmp_path):
    marker = tmp_path / "ran"
    script = ScriptSettings(argv=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    settings = with_scripts(settings, touch=script)
    stale = owner(settings, "a")
    add_node(settings, "b", lease=30)
    give(settings, SERVICE, "b", reason="takeover")
    with pytest.raises(StaleEpoch):
        app_script.run_now(settings, "touch", stale)
    assert not marker.exists() and runs(settings) == []


def test_a_scheduled_run_recorded_before_a_move_never_starts_on_the_old_owner(settings, tmp_path):
    # Given a recorded a due run of `touch` (its message to run it is on its way)
    marker = tmp_path / "ran"
    script = ScriptSettings(argv=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"], interval=1)
    settings = with_scripts(settings, touch=script)
    old = owner(settings, "a")
    with transaction(settings) as connection:
        connection.execute(
            text("INSERT INTO script_schedule VALUES ('touch', clock_timestamp() - interval '5 s')")
        )
    [(name, run_id)] = app_script.take_due_runs(settings, old)
    # When the service moves to b before the message is run
    add_node(settings, "b", lease=30)
    give(settings, SERVICE, "b", reason="manual")
    # Then a's run is refused before the script starts
    with pytest.raises(StaleEpoch):
        app_script.run_scheduled(settings, name, old, run_id)
    assert not marker.exists()


def test_a_run_whose_message_was_lost_does_not_block_its_script_forever(settings, tmp_path):
    # Given a run recorded as running long ago (its message lost before it could start)
    script = ScriptSettings(argv=[sys.executable, "-c", "pass"], interval=1, timeout=2)
    settings = with_scripts(settings, tick=script)
    fence = owner(settings)
    with transaction(settings) as connection:
        connection.execute(
            text("INSERT INTO script_schedule VALUES ('tick', clock_timestamp() - interval '5 s')")
        )
        connection.execute(
            text(
                "INSERT INTO script_run (script, node, epoch, trigger, started_at, status) "
                "VALUES ('tick', 'a', :e, 'schedule', clock_timestamp() - interval '1 min', "
                "'running')"
            ),
            {"e": fence.epoch},
        )
    # Then the next slot still runs
    assert tick(settings, fence) == ["tick"]


def test_output_tail_and_exit_code_are_recorded(settings):
    code = "import sys\nfor i in range(50): print(f'line {i}')\nsys.exit(3)"
    settings = with_scripts(settings, noisy=ScriptSettings(argv=[sys.executable, "-c", code]))
    settings = settings.model_copy(update={"script_output_lines": 5})
    outcome = app_script.run_now(settings, "noisy", owner(settings))
    assert (outcome["status"], outcome["exit_code"]) == ("failed", 3)
    assert outcome["output_tail"].splitlines() == [f"line {i}" for i in range(45, 50)]


def test_unknown_script_names_and_bad_scripts_are_configuration_errors(settings, tmp_path):
    with pytest.raises(ConfigError, match="unknown script 'nosuch'"):
        settings.script("nosuch")
    broken = with_scripts(settings, x=ScriptSettings(argv=["/no/such/program"]))
    with pytest.raises(ConfigError, match="script x"):
        app_script.check_scripts(broken)
