"""The fence outside the database, judged like a takeover (issue 16, items 2 to 6).

Each test drives its case on real PostgreSQL and real processes and asserts the outcome
that was false before the fix.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
from sqlalchemy import text

from tests.support.folders import ledger, scan, with_folder
from tests.support.handlers import handled
from tests.support.proxy import FaultProxy
from tests.support.registry import add_node, age_node, give
from tests.support.servers import database_target, database_url_via
from workers.fence import local_fence, local_state, supervision
from workers.fence.fencing import Fence
from workers.services import app_script, folder_monitor
from workers.settings import ScriptSettings, Settings
from workers.settings.process import Identity
from workers.stores.database import transaction

FOLDER = "folder_monitor"


def claimed(
    settings: Settings, tmp_path: Path, lease: float = 30.0
) -> tuple[Settings, Fence, list[int]]:
    """One file, x.dat, claimed by owner `a` (lease `lease`): the settings with its hot
    folder, a's fence and the claim's ids."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "x.dat").write_text("x")
    settings = with_folder(settings, inbox)
    me = add_node(settings, "a", lease=lease)
    fence = Fence(FOLDER, me, give(settings, FOLDER, "a"))
    (batch,) = scan(settings, fence)
    return settings, fence, batch


def marked_file(settings: Settings, tmp_path: Path, handler: Identity) -> Fence:
    """One file claimed by owner `a` and marked as being handled by `handler`."""
    settings, fence, _ids = claimed(settings, tmp_path, lease=3.0)
    with transaction(settings) as connection:
        connection.execute(
            text("UPDATE folder_file SET handler = :h, handling_since = clock_timestamp()"),
            {"h": handler.incarnation},
        )
    return fence


def release(settings: Settings, fence: Fence) -> int:
    with transaction(settings) as connection:
        return folder_monitor.ledger.release_dead_marks(connection, settings.folders()[0], fence)


def test_marks_of_a_silent_handler_are_kept_until_it_is_gone_by_the_takeover_rule(
    settings, tmp_path
):
    # Given b's marks on a file, and b silent for 5 s (its 3 s lease ran out by raw time)
    b = add_node(settings, "b", lease=3.0)
    fence = marked_file(settings, tmp_path, b)
    settings = with_folder(settings, tmp_path / "inbox")
    age_node(settings, "b", 5, 100)
    # When the owner's own lease was re-established only a second ago (after an outage, or
    # a promotion onto a standby whose clock is ahead), Then the marks stay: b has not had
    # a whole lease to renew in the owner's eyes
    age_node(settings, "a", 0, 1)
    assert release(settings, fence) == 0
    # When the owner's own lease has lapsed, Then it judges nobody
    age_node(settings, "a", 10, 100)
    assert release(settings, fence) == 0
    # When the owner holds its lease and b stayed silent for a lease after that, Then b is gone
    age_node(settings, "a", 0, 100)
    assert release(settings, fence) == 1
    assert ledger(settings)[0].handler is None


def test_an_owner_judging_from_a_fresh_lease_does_not_close_its_own_running_script(settings):
    # Given a run of a's, started 20 s ago by the database clock, of a script whose timeout
    # is 5 s: by raw time it looks lost
    me = add_node(settings, "a", lease=3.0)
    fence = Fence("app_script", me, give(settings, "app_script", "a"))
    with transaction(settings) as connection:
        run = app_script.ledger.record_start(connection, "nightly", fence, "manual", None)
        connection.execute(
            text(
                "UPDATE script_run SET started_at = clock_timestamp() - interval '20 s' "
                "WHERE id = :id"
            ),
            {"id": run},
        )
    # When a's lease only just began again (a promoted standby whose clock is ahead)
    age_node(settings, "a", 0, 1)
    with transaction(settings) as connection:
        still = app_script.ledger.running(connection, "nightly", fence, 5 + 3)
    # Then the run still counts as running, and is not closed as lost
    assert still
    with transaction(settings) as connection:
        status = connection.execute(
            text("SELECT status FROM script_run WHERE id = :id"), {"id": run}
        ).scalar_one()
    assert status == "running"


def test_a_lower_epoch_than_the_work_s_is_lost_but_an_older_read_never_undoes_a_takeover():
    me = Identity("b", "00000000-0000-0000-0000-00000000b0b0")
    fence = Fence(FOLDER, me, 2)
    try:
        # Given b's heartbeat read the service at epoch 1 (owned by another) and then b took
        # it at epoch 2
        before = time.monotonic()
        local_fence.observed(me.incarnation, {FOLDER: 1}, set(), before)
        local_fence.acquired(me.incarnation, FOLDER, 2)
        assert local_fence.lost(fence) is None
        # When a heartbeat sent before the takeover committed reports epoch 1 late
        local_fence.observed(me.incarnation, {FOLDER: 1}, set(), before)
        # Then it changes nothing
        assert local_fence.lost(fence) is None
        # When a heartbeat sent afterwards reads epoch 1 (a standby promoted without the move)
        local_fence.observed(me.incarnation, {FOLDER: 1}, set(), time.monotonic())
        # Then work fenced at epoch 2 is lost
        assert "behind this work's epoch 2" in (local_fence.lost(fence) or "")
    finally:
        local_state.forget(me.incarnation)


def test_the_local_deadline_keeps_the_last_renewal_the_poll_and_the_margin_inside_the_lease():
    me = "00000000-0000-0000-0000-0000000dead1"
    try:
        # Given renewals sent at t0 and t0 + 1 with a 3 s lease and a 0.2 s margin
        t0 = time.monotonic()
        local_fence.renewed(me, t0, 3.0, 1.0, 0.2)
        # (the first one counts one interval back)
        assert local_fence.deadline(me) == t0 - 1.0 + 3.0 - supervision.POLL_SECONDS - 0.2
        local_fence.renewed(me, t0 + 1.0, 3.0, 1.0, 0.2)
        # Then the deadline counts from the previous renewal: the database may lose the last
        assert local_fence.deadline(me) == t0 + 3.0 - supervision.POLL_SECONDS - 0.2
    finally:
        local_state.forget(me)


def test_a_command_s_timeout_kills_what_it_started(tmp_path):
    # Given a command that starts a background process and then waits
    pid_file = tmp_path / "pid"
    script = f"sleep 600 & echo $! > {pid_file}; wait"
    # When it times out
    code, _last = supervision.run_command(["bash", "-c", script], None, 3.0)
    # Then the command and its subcommand are both dead
    assert code is None
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_guard_kills_a_grandchild_that_left_its_session(tmp_path):
    # Given work whose child daemonizes a grandchild into a session of its own, and ends
    # once the grandchild is running there (it has written its pid: on a loaded machine the
    # child could otherwise end, and the guard strike, before the grandchild wrote it)
    pid_file = tmp_path / "pid"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    open({str(pid_file)!r} + '.new', 'w').write(str(os.getpid()))\n"
        f"    os.rename({str(pid_file)!r} + '.new', {str(pid_file)!r})\n"
        "    time.sleep(600)\n"
        f"while not os.path.exists({str(pid_file)!r}):\n"
        "    time.sleep(0.01)\n"
    )

    def work(watch: supervision.Watch) -> int:
        import subprocess

        return subprocess.run([sys.executable, "-c", code], check=True).returncode

    # When the guarded work ends
    assert supervision.guarded(work, "a daemonizing child") == 0
    # Then the grandchild is gone too
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


BATCH = "00000000-0000-0000-0000-0000000ba7c2"


def test_a_start_and_an_outcome_retried_after_an_ambiguous_commit_find_their_own_marks(
    settings, tmp_path
):
    settings, fence, ids = claimed(settings, tmp_path)
    # Given a batch's start that committed, its answer lost (so it is sent again)
    first = folder_monitor.batch.start_batch(settings, ids, fence, BATCH)
    again = folder_monitor.batch.start_batch(settings, ids, fence, BATCH)
    other = folder_monitor.batch.start_batch(settings, ids, fence, str(uuid.uuid4()))
    # Then the retry finds the batch's marks (counted once), and no other batch takes them
    assert [c.id for c in again] == [c.id for c in first] == ids
    assert other == []
    assert ledger(settings)[0].attempts == 1
    # Given its outcome recorded, the answer lost, and recorded again
    outcomes = {ids[0]: folder_monitor.ledger.Outcome("processed")}
    for _ in range(2):
        recorded = folder_monitor.batch.record_batch(settings, fence, first, outcomes, BATCH)
        # Then both say the outcome is recorded (no false "another handler took them")
        assert recorded == set(ids)
    assert (ledger(settings)[0].state, ledger(settings)[0].handler) == ("processed", None)


def test_a_batch_that_cannot_run_records_its_files_untried_and_frees_them(settings, tmp_path):
    settings, fence, ids = claimed(settings, tmp_path)
    # Given a hot folder where the handler's area cannot be made (an OSError, as from a
    # share that went away or a fork that failed)
    (tmp_path / "inbox" / folder_monitor.areas.HANDLED_DIR).write_text("in the way")
    # When the batch is handled
    assert folder_monitor.handle_files(settings, settings.folders()[0], ids, fence) == 0
    # Then its marks are cleared at once, not held until the stuck rule (hours)
    (row,) = ledger(settings)
    assert (row.state, row.handler, row.attempts) == ("processing", None, 0)


def test_a_refused_name_already_in_failed_still_leaves_the_hot_folder(settings, tmp_path):
    # Given a name that cannot be taken (too long for the processing area), and a file of
    # that name already set aside in failed/ by an earlier arrival
    inbox = tmp_path / "inbox"
    (inbox / "failed").mkdir(parents=True)
    long_name = "l" * 240 + ".dat"
    (inbox / "failed" / long_name).write_text("earlier")
    (inbox / long_name).write_text("again")
    settings = with_folder(settings, inbox)
    me = add_node(settings, "a", lease=30.0)
    fence = Fence(FOLDER, me, give(settings, FOLDER, "a"))
    # When the owner scans
    scan(settings, fence)
    # Then the new one is set aside too (beside the earlier one), not left for ever
    assert not (inbox / long_name).exists()
    kept = sorted(p.read_text() for p in (inbox / "failed").iterdir())
    assert kept == ["again", "earlier"]


def test_a_manual_run_is_refused_while_a_run_of_the_script_is_in_progress(settings, tmp_path):
    # Given a script with a run in progress on its owner
    script = {"argv": [sys.executable, "-c", "print('ran')"], "timeout": 30}
    settings = settings.model_copy(update={"scripts": {"report": ScriptSettings(**script)}})
    me = add_node(settings, "a", lease=30.0)
    fence = Fence("app_script", me, give(settings, "app_script", "a"))
    with transaction(settings) as connection:
        app_script.ledger.record_start(connection, "report", fence, "schedule", None)
    # When an operator asks for a run now, Then it is refused, and nothing is recorded
    outcome = app_script.run_now(settings, "report", fence)
    assert outcome["status"] == "refused"
    assert "in progress" in outcome["output_tail"]
    with transaction(settings) as connection:
        runs = connection.execute(text("SELECT count(*) FROM script_run")).scalar_one()
    assert runs == 1


def test_a_claimed_file_found_in_processed_by_its_identity_is_recorded_processed(
    settings, tmp_path
):
    # Given a claimed file that was handled and moved to processed/, and a database that
    # lost that outcome (a standby promoted without the last writes): the claim is open
    settings, fence, ids = claimed(settings, tmp_path)
    inbox = tmp_path / "inbox"
    (inbox / "processed").mkdir()
    folder = settings.folders()[0]
    os.rename(
        folder_monitor.areas.processing_path(folder, ids[0], "x.dat"), inbox / "processed" / "x.dat"
    )
    # When the batch is handled again
    folder_monitor.handle_files(settings, settings.folders()[0], ids, fence)
    # Then the file is recognised as processed (same device and inode), not failed as missing
    assert ledger(settings)[0].state == "processed"


def test_a_script_still_alive_on_its_node_is_not_started_again(settings, tmp_path):
    # Given a long run of a script on node a (its record lost by the database)
    me = add_node(settings, "a", lease=30.0)
    fence = Fence("app_script", me, 1)
    script = ScriptSettings(argv=[sys.executable, "-c", "import time; time.sleep(30)"], timeout=2)
    first = threading.Thread(target=app_script.runner.execute, args=(script, 5, fence))
    first.start()
    try:
        time.sleep(0.5)
        # When the same script is started again on a
        second = app_script.runner.execute(script, 5, fence)
        # Then it does not start: the host knows the first still lives
        assert (second.status, second.output_tail) == ("failed", app_script.runner.ALIVE_HERE)
    finally:
        first.join()
        local_state.forget(me.incarnation)


def test_after_its_database_broke_a_node_starts_no_new_work_for_a_lease_and_a_beat(
    settings, tmp_path
):
    # Given the owner reaching its database through a link that breaks and comes back
    proxy = FaultProxy(database_target(settings.database_url))
    try:
        settings = settings.model_copy(
            update={"database_url": database_url_via(settings.database_url, proxy.port)}
        )
        settings, fence, ids = claimed(settings, tmp_path)
        proxy.cut()
        with contextlib.suppress(Exception), transaction(settings) as connection:
            connection.execute(text("SELECT 1"))
        proxy.restore()
        # When it is asked to handle a batch at once, Then it waits (nothing marked)
        assert local_fence.holding_off(settings)
        assert folder_monitor.handle_files(settings, settings.folders()[0], ids, fence) == 0
        assert ledger(settings)[0].handler is None
        # And after a lease and a heartbeat it goes on
        time.sleep(settings.longest_lease() + settings.heartbeat_interval)
        assert local_fence.holding_off(settings) is None
        assert folder_monitor.handle_files(settings, settings.folders()[0], ids, fence) == 1
    finally:
        proxy.close()


def test_own_marks_of_a_batch_no_longer_in_flight_here_are_cleared_at_once(settings, tmp_path):
    # Given a's own marks on a file, by a batch that is still in flight on its host
    settings, fence, ids = claimed(settings, tmp_path)
    folder_monitor.batch.start_batch(settings, ids, fence, BATCH)
    mark = f"{folder_monitor.ledger.BATCH_MARK}{BATCH}"
    try:
        with local_state.holding(fence.me.incarnation, mark):
            # Then they stay
            assert release(settings, fence) == 0
        # When that batch is no longer in flight (its outcome lost with a promoted
        # standby's last writes, or its pool process killed), Then they are cleared now,
        # not after hours
        assert release(settings, fence) == 1
    finally:
        local_state.forget(fence.me.incarnation)


def test_a_file_another_batch_of_this_node_still_handles_is_not_started(
    settings, tmp_path, handler_log
):
    # Given a file still held by another batch's guard on this node (whose marks the
    # database lost)
    settings, fence, ids = claimed(settings, tmp_path)
    folder = settings.folders()[0]
    holder = os.fork()
    if holder == 0:  # pragma: no cover - the other guard
        folder_monitor.areas.hold_files(fence, folder, ids[:1])
        time.sleep(60)
        os._exit(0)
    try:
        time.sleep(0.3)
        # When a new batch of it is handled, Then the handler does not run, the file is free
        assert folder_monitor.handle_files(settings, folder, ids, fence) == 0
        assert handled(handler_log) == {}
        assert (ledger(settings)[0].handler, ledger(settings)[0].attempts) == (None, 0)
    finally:
        os.kill(holder, 9)
        os.waitpid(holder, 0)
    # When that guard is gone, Then the file is handled
    assert folder_monitor.handle_files(settings, folder, ids, fence) == 1
    local_state.forget(fence.me.incarnation)


def test_a_file_the_database_forgot_is_not_put_back_while_a_batch_here_handles_it(
    settings, tmp_path
):
    # Given a claimed file in processing whose claim the database then lost, while a batch
    # of this node still handles it
    settings, fence, ids = claimed(settings, tmp_path)
    folder = settings.folders()[0]
    with transaction(settings) as connection:
        connection.execute(text("DELETE FROM folder_file"))
    holder = os.fork()
    if holder == 0:  # pragma: no cover - that batch's guard
        folder_monitor.areas.hold_files(fence, folder, ids[:1])
        time.sleep(60)
        os._exit(0)
    inbox = tmp_path / "inbox"
    try:
        # When the owner scans, and again after a lease and a heartbeat
        for _ in range(2):
            scan(settings, fence)
            time.sleep(settings.longest_lease() + settings.heartbeat_interval)
        scan(settings, fence)
        # Then the file stays in processing with that batch
        assert not (inbox / "x.dat").exists()
    finally:
        os.kill(holder, 9)
        os.waitpid(holder, 0)
    # When the batch is gone, Then the file goes back to the hot folder to be handled again
    scan(settings, fence)
    assert (inbox / "x.dat").exists()
    local_state.forget(fence.me.incarnation)


def test_a_python_handler_gets_the_allow_listed_environment_not_the_node_s_secrets(
    settings, tmp_path, handler_log, monkeypatch
):
    # Given a node whose environment holds its database URL (a password in it)
    monkeypatch.setenv("FAILOVER_DATABASE_URL", "postgresql://u:secret@db/x")
    monkeypatch.setenv("SOME_OTHER_SECRET", "x")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "x.dat").write_text("x")
    settings = with_folder(settings, inbox, handler="tests.support.handlers:environment")
    me = add_node(settings, "a", lease=30.0)
    fence = Fence(FOLDER, me, give(settings, FOLDER, "a"))
    # When a Python handler runs
    (batch,) = scan(settings, fence)
    folder_monitor.handle_files(settings, settings.folders()[0], batch, fence)
    # Then it sees the allow-list and what is passed through, as a command does
    seen = set(handler_log.read_text().split()[1:])
    assert "TEST_HANDLER_LOG" in seen
    assert not {"FAILOVER_DATABASE_URL", "SOME_OTHER_SECRET"} & seen
