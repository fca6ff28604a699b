"""Side effects outside the database, fenced too: files and child processes (issue 9).

Each test drives one case on real PostgreSQL, real files and real processes, and asserts
the outcome that was false before the fix.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text

from tests.support import folders
from tests.support.folders import ledger, run_until_idle, scan, with_folder
from tests.support.handlers import handled
from tests.support.registry import add_node, give, lapse
from workers.errors import ConfigError
from workers.fence import local_fence, local_state
from workers.fence.fencing import Fence, fenced
from workers.services import app_script, folder_monitor
from workers.services.folder_monitor.ledger import Outcome
from workers.settings import HotFolderSettings, ScriptSettings, Settings
from workers.stores.database import transaction

FOLDER = "folder_monitor"
BATCH = "00000000-0000-0000-0000-0000000ba7c1"


def owner(settings: Settings, name: str, lease: float = 30) -> Fence:
    return folders.owner(settings, name, lease)


def inbox_with(tmp_path: Path, *names: str) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in names:
        (inbox / name).write_text(name)
    return inbox


# ---------------------------------------------------------------- case 1: planned handover


def test_a_new_owner_leaves_files_alone_while_the_old_handler_holds_them(
    settings, tmp_path, handler_log
):
    # Given owner a handling a batch (its files marked by its incarnation)
    settings = with_folder(settings, inbox_with(tmp_path, "x.dat", "y.dat"))
    old = owner(settings, "a")
    (batch,) = scan(settings, old)
    claims = folder_monitor.batch.start_batch(settings, batch, old, BATCH)
    # When the service moves to b (a planned move: a stays alive) and b scans
    new = owner(settings, "b")
    # Then b dispatches none of a's files while a holds them
    assert scan(settings, new) == []
    # When a says it is done (it stopped before handling them: the done marker)
    folder_monitor.batch.record_batch(
        settings, old, claims, {claim.id: Outcome("untried") for claim in claims}, BATCH
    )
    # Then b takes and handles them, each once
    run_until_idle(settings, new)
    assert handled(handler_log) == {"x.dat": 1, "y.dat": 1}
    assert {(row.state, row.node, row.attempts) for row in ledger(settings)} == {
        ("processed", "b", 1)
    }


def test_a_dead_handlers_marks_are_cleared_once_its_lease_has_run_out(
    settings, tmp_path, handler_log
):
    settings = with_folder(settings, inbox_with(tmp_path, "x.dat"))
    old = owner(settings, "a", lease=3.0)
    (batch,) = scan(settings, old)
    folder_monitor.batch.start_batch(settings, batch, old, BATCH)
    new = owner(settings, "b")
    assert scan(settings, new) == []
    # When a's lease runs out (its row aged by its lease, as if it had not renewed since)
    lapse(settings, "a")
    run_until_idle(settings, new)
    assert handled(handler_log) == {"x.dat": 1}


def test_the_old_owner_kills_its_handler_when_it_loses_the_service(
    settings, tmp_path, handler_log, monkeypatch
):
    # Given a handler that takes long, running for owner a
    monkeypatch.setenv("TEST_HANDLER_SECONDS", "30")
    settings = with_folder(
        settings, inbox_with(tmp_path, "x.dat"), handler="tests.support.handlers:slow"
    )
    old = owner(settings, "a")
    (batch,) = scan(settings, old)
    local_fence.observed(old.me.incarnation, {FOLDER: old.epoch}, {FOLDER}, time.monotonic())

    # When a's heartbeat sees the service at a new epoch half a second later
    def lose() -> None:
        time.sleep(0.5)
        local_fence.observed(old.me.incarnation, {FOLDER: old.epoch + 1}, set(), time.monotonic())

    import threading

    threading.Thread(target=lose).start()
    folder_monitor.handle_files(settings, settings.folders()[0], batch, old)
    # Then the handler was killed at once, and the file is free for the next owner, untried
    (row,) = ledger(settings)
    assert (row.state, row.handler, row.attempts) == ("processing", None, 0)
    assert handled(handler_log) == {}
    local_state.forget(old.me.incarnation)


# ---------------------------------------------------------------- case 2: local deadline


def test_a_node_past_its_local_lease_deadline_kills_its_handler_and_script(
    settings, tmp_path, handler_log, monkeypatch
):
    monkeypatch.setenv("TEST_HANDLER_SECONDS", "30")
    settings = with_folder(
        settings, inbox_with(tmp_path, "x.dat"), handler="tests.support.handlers:slow"
    )
    fence = owner(settings, "a")
    (batch,) = scan(settings, fence)
    # Its last renewal was sent now, with a lease of one second (then no renewal comes)
    local_fence.renewed(fence.me.incarnation, time.monotonic(), 1.0, 0.0, 0.0)
    folder_monitor.handle_files(settings, settings.folders()[0], batch, fence)
    assert handled(handler_log) == {}
    local_fence.renewed(fence.me.incarnation, time.monotonic(), 2.0, 0.0, 0.0)
    pid_file = tmp_path / "script.pid"
    script = ScriptSettings(
        argv=[sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"],
        timeout=120,
    )  # fmt: skip
    result = app_script.runner.execute(script, 5, Fence("app_script", fence.me, 1))
    assert result.status == "killed"
    assert "lease could not be renewed" in (result.killed_for or "")
    assert (
        not psutil.pid_exists(int(pid_file.read_text()))
        or psutil.Process(int(pid_file.read_text())).status() == psutil.STATUS_ZOMBIE
    )
    local_state.forget(fence.me.incarnation)


# ---------------------------------------------------------------- case 3: identity


def test_a_file_replaced_after_its_claim_is_never_renamed_by_that_claim(
    settings, tmp_path, handler_log
):
    inbox = inbox_with(tmp_path, "same.dat", "half.dat")
    settings = with_folder(settings, inbox)
    folder = settings.folders()[0]
    fence = owner(settings, "a")
    found = folder_monitor.names.list_folder(folder)
    with fenced(settings, fence) as connection:
        claimed = folder_monitor.ledger.record_and_claim(connection, folder, found.arrivals, fence)
    # When, before the (stale) owner renames them, one file is replaced by a new file of the
    # same name and the other grows (still being written)
    (inbox / "same.dat").unlink()
    (inbox / "same.dat").write_text("a new arrival")
    with (inbox / "half.dat").open("a") as out:
        out.write(" more")
    changed = folder_monitor.areas.move_into_processing(folder, claimed)
    # Then neither is renamed into processing; both claims are undone and seen anew
    assert sorted(changed) == sorted(claim.id for claim in claimed)
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["half.dat", "same.dat"]
    assert not list(folder.processing.iterdir())
    with fenced(settings, fence) as connection:
        folder_monitor.ledger.undo_claims(connection, changed)
    run_until_idle(settings, fence)
    assert (inbox / "processed" / "same.dat").read_text() == "a new arrival"
    assert (inbox / "processed" / "half.dat").read_text() == "half.dat more"


# ---------------------------------------------------------------- case 4: lost batches


def test_a_batch_lost_before_it_started_is_sent_again_within_about_a_lease(
    settings, tmp_path, handler_log
):
    settings = with_folder(settings, inbox_with(tmp_path, "x.dat"))
    fence = owner(settings, "a")
    (lost,) = scan(settings, fence)  # its message never arrives
    assert scan(settings, fence) == []
    # When a lease and a heartbeat have passed since it was sent (its row aged by as much)
    age_dispatch(settings, settings.node_lease_timeout() + settings.heartbeat_interval + 0.2)
    assert scan(settings, fence) == [lost]


def age_dispatch(settings: Settings, seconds: float) -> None:
    """Move every file's dispatch time back by `seconds`, as if that time had passed."""
    with transaction(settings) as connection:
        connection.execute(
            text(
                "UPDATE folder_file SET "
                "dispatched_at = dispatched_at - make_interval(secs => :seconds)"
            ),
            {"seconds": seconds},
        )


# ---------------------------------------------------------------- case 5: bad names


def test_unusable_names_go_to_failed_and_the_folder_goes_on(settings, tmp_path, handler_log):
    inbox = inbox_with(tmp_path, "good.dat")
    bad = os.fsdecode(b"bad-\xff\xfe.dat")
    (inbox / bad).write_text("not utf-8")
    long_name = "l" * 240 + ".dat"
    (inbox / long_name).write_text("long")
    second = tmp_path / "second"
    second.mkdir()
    (second / "other.dat").write_text("other")
    folders = [
        HotFolderSettings(name="inbox", path=inbox, handler="tests.support.handlers:record", settle_seconds=0),
        HotFolderSettings(name="second", path=second, handler="tests.support.handlers:record", settle_seconds=0),
    ]  # fmt: skip
    settings = settings.model_copy(update={"hot_folders": folders})
    fence = owner(settings, "a")
    for _ in range(3):
        batches: list[tuple[str, list[int]]] = []
        folder_monitor.scan(settings, fence, lambda name, ids, b=batches: b.append((name, ids)))
        for name, ids in batches:
            folder = folder_monitor.folder_named(settings, name)
            folder_monitor.handle_files(settings, folder, ids, fence)
    assert handled(handler_log) == {"good.dat": 1, "other.dat": 1}
    assert sorted(os.listdir(inbox / "failed")) == sorted([bad, long_name])
    refused = {row.rel_path: row.error for row in ledger(settings) if row.state == "refused"}
    assert refused == {
        "bad-\\xff\\xfe.dat": "its name is not valid UTF-8",
        long_name: f"its name is longer than {255 - 21} bytes (the processing area adds the claim id)",
    }


def test_a_processed_dir_on_another_filesystem_is_refused_at_start(settings, tmp_path):
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test's folder")
    away = Path("/dev/shm") / f"processed-{os.getpid()}"
    try:
        settings = with_folder(settings, inbox_with(tmp_path), processed_dir=away)
        with pytest.raises(ConfigError, match=r"processed_dir .* is on another filesystem"):
            folder_monitor.check_folders(settings)
    finally:
        shutil.rmtree(away, ignore_errors=True)


# ---------------------------------------------------------------- case 6: a second copy


def test_a_second_copy_with_the_same_name_size_and_mtime_is_processed(
    settings, tmp_path, handler_log
):
    inbox = inbox_with(tmp_path, "copy.dat")
    settings = with_folder(settings, inbox)
    fence = owner(settings, "a")
    run_until_idle(settings, fence)
    shutil.copy2(inbox / "processed" / "copy.dat", inbox / "copy.dat")  # cp -p
    run_until_idle(settings, fence)
    assert handled(handler_log) == {"copy.dat": 2}
    assert len(list((inbox / "processed").iterdir())) == 2
    assert not (inbox / "copy.dat").exists()


# ---------------------------------------------------------------- case 7: script run rows


def script_owner(settings: Settings, name: str = "a") -> Fence:
    me = add_node(settings, name, lease=30)
    return Fence("app_script", me, give(settings, "app_script", name))


def runs(settings: Settings) -> list:
    with transaction(settings) as connection:
        return list(connection.execute(text("SELECT * FROM script_run ORDER BY id")))


def test_a_run_that_cannot_start_is_closed(settings, tmp_path):
    missing = tmp_path / "gone"
    settings = settings.model_copy(
        update={"scripts": {"gone": ScriptSettings(argv=[str(missing)])}}
    )
    fence = script_owner(settings)
    result = app_script.run_now(settings, "gone", fence)
    (row,) = runs(settings)
    assert (result["status"], row.status) == ("failed", "failed")
    assert "could not start" in row.output_tail


def test_runs_of_a_previous_incarnation_at_the_same_epoch_are_orphans(settings, tmp_path):
    marker = tmp_path / "ran"
    script = ScriptSettings(
        argv=[sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"], interval=0.2
    )
    settings = settings.model_copy(update={"scripts": {"tick": script}})
    first = add_node(settings, "a", lease=1.0)
    before = Fence("app_script", first, give(settings, "app_script", "a"))
    with fenced(settings, before) as connection:
        app_script.ledger.record_start(connection, "tick", before, "schedule", None)
    # The node is killed, and restarts under a new incarnation at the same epoch
    time.sleep(1.1)
    again = add_node(settings, "a", lease=30)
    now = Fence("app_script", again, before.epoch)
    app_script.take_due_runs(settings, now)  # first slot recorded
    time.sleep(0.3)
    taken = app_script.take_due_runs(settings, now)
    assert [name for name, _ in taken] == ["tick"]
    statuses = [(row.status, row.incarnation is not None) for row in runs(settings)]
    assert statuses[0] == ("failed", True)
    assert "its node stopped during the run" in runs(settings)[0].output_tail


def test_a_run_of_a_live_previous_owner_is_left_to_it(settings, tmp_path):
    script = ScriptSettings(argv=["true"], interval=0.2)
    settings = settings.model_copy(update={"scripts": {"tick": script}})
    old = script_owner(settings, "a")
    with fenced(settings, old) as connection:
        run_id = app_script.ledger.record_start(connection, "tick", old, "schedule", None)
    new = script_owner(settings, "b")
    app_script.take_due_runs(settings, new)
    time.sleep(0.3)
    assert app_script.take_due_runs(settings, new) == []
    # The old owner records its end (fenced by its run, not by the service it lost)
    result = app_script.ledger.RunResult("killed", -9, "(killed: it no longer owns app_script)")
    with transaction(settings) as connection:
        assert app_script.ledger.record_end(connection, run_id, result, old.me)
    time.sleep(0.3)
    assert [name for name, _ in app_script.take_due_runs(settings, new)] == ["tick"]


def test_children_do_not_get_the_nodes_secrets(settings, monkeypatch):
    monkeypatch.setenv("FAILOVER_DATABASE_URL", "postgresql://u:secret@db/x")
    script = ScriptSettings(
        argv=[sys.executable, "-c", "import os; print(sorted(os.environ))"], env={"MINE": "1"}
    )
    result = app_script.runner.execute(script, 5)
    assert "FAILOVER_DATABASE_URL" not in result.output_tail
    assert "MINE" in result.output_tail
