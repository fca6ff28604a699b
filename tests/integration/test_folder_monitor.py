"""The folder monitor on real PostgreSQL and real files, in process: claim, settle, fence."""

from __future__ import annotations

import os
import sys
import time

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.support.folders import ledger, owner, run_until_idle, with_folder
from tests.support.handlers import handled
from tests.support.registry import add_node, give
from workers.errors import ConfigError, StaleEpoch
from workers.fence.fencing import Fence
from workers.services import folder_monitor
from workers.settings import HotFolderSettings, Settings
from workers.stores.database import transaction

SERVICE = "folder_monitor"


def test_each_file_is_claimed_once_handled_once_and_moved_to_processed(
    settings, tmp_path, handler_log
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(25):
        (inbox / f"f{i:03}.dat").write_text(str(i))
    (inbox / "partial.tmp").write_text("ignored")
    (inbox / ".hidden").write_text("ignored")
    settings = with_folder(settings, inbox)
    fence = owner(settings)
    run_until_idle(settings, fence)
    run_until_idle(settings, fence)
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == [
        f"f{i:03}.dat" for i in range(25)
    ]
    assert handled(handler_log) == {f"f{i:03}.dat": 1 for i in range(25)}
    rows = ledger(settings)
    assert len(rows) == 25 and {r.state for r in rows} == {"processed"}
    assert {(r.epoch, r.node, r.attempts) for r in rows} == {(fence.epoch, "a", 1)}
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [".hidden", "partial.tmp"]


def test_a_file_still_being_written_is_not_taken_before_it_settles(settings, tmp_path, handler_log):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = with_folder(settings, inbox, settle_seconds=0.6)
    fence = owner(settings)
    growing = inbox / "big.dat"
    growing.write_text("part 1")
    run_until_idle(settings, fence)
    with growing.open("a") as out:
        out.write(" part 2")
    run_until_idle(settings, fence)
    assert growing.exists() and handled(handler_log) == {}
    assert [r.state for r in ledger(settings)] == ["seen"]
    time.sleep(0.7)
    run_until_idle(settings, fence)
    assert (inbox / "processed" / "big.dat").read_text() == "part 1 part 2"
    assert handled(handler_log) == {"big.dat": 1}


def test_symlinks_are_refused_and_never_followed(settings, tmp_path, handler_log):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (inbox / "link.dat").symlink_to(secret)
    settings = with_folder(settings, inbox)
    run_until_idle(settings, owner(settings))
    assert handled(handler_log) == {}
    assert secret.read_text() == "outside" and (inbox / "link.dat").is_symlink()
    assert [(r.rel_path, r.state) for r in ledger(settings)] == [("link.dat", "refused")]


def test_a_node_that_lost_ownership_claims_nothing_and_starts_no_handler(
    settings, tmp_path, handler_log
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "x.dat").write_text("x")
    settings = with_folder(settings, inbox)
    stale = owner(settings, "a")
    add_node(settings, "b")
    give(settings, SERVICE, "b", reason="takeover")
    with pytest.raises(StaleEpoch):
        folder_monitor.scan(settings, stale, lambda name, ids: None)
    assert ledger(settings) == [] and (inbox / "x.dat").exists()


def test_a_new_owner_adopts_the_files_a_dead_owner_claimed(settings, tmp_path, handler_log):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("a.dat", "b.dat"):
        (inbox / name).write_text(name)
    settings = with_folder(settings, inbox)
    first = owner(settings, "a")
    folder_monitor.scan(settings, first, lambda name, ids: None)  # claimed, never handled
    assert {r.state for r in ledger(settings)} == {"processing"}
    second = owner(settings, "b")
    run_until_idle(settings, second)
    rows = ledger(settings)
    assert {(r.state, r.node, r.epoch) for r in rows} == {("processed", "b", second.epoch)}
    assert handled(handler_log) == {"a.dat": 1, "b.dat": 1}


def test_a_failing_handler_is_retried_then_the_file_goes_to_failed(settings, tmp_path, handler_log):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bad.dat").write_text("bad")
    folder = HotFolderSettings(
        name="inbox",
        path=inbox,
        handler="tests.support.handlers:fail",
        settle_seconds=0,
        max_attempts=3,
        retry_backoff=0,
    )
    settings = settings.model_copy(update={"hot_folders": [folder]})
    run_until_idle(settings, owner(settings))
    assert (inbox / "failed" / "bad.dat").exists()
    (row,) = ledger(settings)
    assert (row.state, row.attempts) == ("failed", 3)
    assert "failing on purpose" in row.error
    assert handled(handler_log) == {"bad.dat": 3}


def test_a_command_handler_gets_the_path_as_an_argument(settings, tmp_path, handler_log):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "c.dat").write_text("payload")
    copy = tmp_path / "copy.dat"
    command = [
        sys.executable,
        "-c",
        "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])",
        "{path}",
        str(copy),
    ]
    folder = HotFolderSettings(name="inbox", path=inbox, command=command, settle_seconds=0)
    settings = settings.model_copy(update={"hot_folders": [folder]})
    run_until_idle(settings, owner(settings))
    assert copy.read_text() == "payload"
    assert (inbox / "processed" / "c.dat").exists()


def test_a_folder_that_disappears_and_comes_back_is_survived(
    settings, tmp_path, handler_log, caplog
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = with_folder(settings, inbox)
    fence = owner(settings)
    os.rename(inbox, tmp_path / "away")
    assert folder_monitor.scan(settings, fence, lambda name, ids: None) == {"inbox": 0}
    assert "hot folder inbox unavailable" in caplog.text
    os.rename(tmp_path / "away", inbox)
    (inbox / "back.dat").write_text("x")
    run_until_idle(settings, fence)
    assert handled(handler_log) == {"back.dat": 1}


def test_bad_folder_configuration_is_one_clear_error(settings, tmp_path):
    missing = with_folder(settings, tmp_path / "nope")
    with pytest.raises(ConfigError, match="is not a directory"):
        folder_monitor.check_folders(missing)
    (tmp_path / "in").mkdir()
    folder = HotFolderSettings(name="inbox", path=tmp_path / "in", handler="no.such.module:handle")
    with pytest.raises(ConfigError, match="cannot be imported"):
        folder_monitor.check_folders(settings.model_copy(update={"hot_folders": [folder]}))


def test_shared_processing_may_run_on_any_node_but_only_at_the_current_epoch(
    settings, tmp_path, handler_log
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("one.dat", "two.dat"):
        (inbox / name).write_text(name)
    settings = with_folder(settings, inbox).model_copy(
        update={"folder_dispatch": "shared", "folder_batch_size": 1}
    )
    fence = owner(settings, "a")
    batches: list[list[int]] = []
    folder_monitor.scan(settings, fence, lambda name, ids: batches.append(ids))
    helper = add_node(settings, "b")
    folder = settings.folders()[0]
    # A helper node handles a batch while the owner's epoch holds
    shared = Fence(SERVICE, helper, fence.epoch, owner_only=False)
    assert folder_monitor.handle_files(settings, folder, batches[0], shared) == 1
    # After a change of owner, the helper's work for the old epoch is refused
    give(settings, SERVICE, "b", reason="takeover")
    assert folder_monitor.handle_files(settings, folder, batches[1], shared) == 0
    assert sum(handled(handler_log).values()) == 1


def test_a_file_whose_owner_died_between_its_commit_and_its_move_is_moved_by_the_next_scan(
    settings, tmp_path, handler_log
):
    # Given a file handled and recorded as processed, but still in the processing area (its
    # owner was killed after the commit, before the move)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "late.dat").write_text("x")
    settings = with_folder(settings, inbox)
    fence = owner(settings)
    batches: list[list[int]] = []
    folder_monitor.scan(settings, fence, lambda name, ids: batches.append(ids))
    [[file_id]] = batches
    with transaction(settings) as connection:
        connection.execute(
            text("UPDATE folder_file SET state = 'processed' WHERE id = :id"), {"id": file_id}
        )
    assert (inbox / ".processing" / f"{file_id}__late.dat").exists()
    # When the owner scans again, Then the file goes where its state says, without a handler run
    folder_monitor.scan(settings, fence, lambda name, ids: batches.append(ids))
    assert (inbox / "processed" / "late.dat").exists()
    assert not list((inbox / ".processing").iterdir())
    assert handled(handler_log) == {}


def test_files_whose_claims_the_database_lost_go_back_to_the_hot_folder_and_are_counted(
    settings, tmp_path, handler_log, monkeypatch
):
    # Given three files claimed and in processing
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("inflight.dat", "waiting.dat", "reissued.dat"):
        (inbox / name).write_text(name)
    losing = with_folder(settings, inbox, handler="tests.support.handlers:lose_claim")
    monkeypatch.setenv("TEST_LOSE_CLAIM_URL", libpq_url(settings))
    fence = owner(losing, lease=60)
    folder_monitor.scan(losing, fence, lambda name, ids: None)
    ids = {row.rel_path: row.id for row in ledger(settings)}
    # When the database loses their claims (a standby promoted without the primary's last
    # commits): one while its handler runs, one before it starts, and one whose id is then
    # issued again to another file
    with transaction(settings) as connection:
        connection.execute(
            text("DELETE FROM folder_file WHERE id = ANY(:ids)"),
            {"ids": [ids["waiting.dat"], ids["reissued.dat"]]},
        )
        connection.execute(
            text(
                "INSERT INTO folder_file (id, folder, rel_path, size, mtime_ns, state, epoch, "
                "node) VALUES (:id, 'inbox', 'other.dat', 1, 1, 'processing', :epoch, 'a')"
            ),
            {"id": ids["reissued.dat"], "epoch": fence.epoch},
        )
    folder_monitor.handle_files(losing, losing.folders()[0], [ids["inflight.dat"]], fence)
    assert (
        folder_monitor.handle_files(losing, losing.folders()[0], [ids["waiting.dat"]], fence) == 0
    )
    # Then the finished handler recorded and moved nothing
    assert not (inbox / "processed").exists()
    # When the owner scans again, Then the file whose handler succeeded goes to processed/
    # (never handled twice), and every file not yet handled is back in the hot folder and
    # counted; then each is claimed and handled again
    # (not before a lease and a heartbeat have passed since the owner first saw them
    # unclaimed: a node the database forgot may still be handling them until its guard
    # sees the epoch go back)
    settings = with_folder(settings, inbox)
    folder_monitor.scan(settings, fence, lambda name, ids: None)
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == []
    time.sleep(settings.lease_timeout + settings.heartbeat_interval)
    folder_monitor.scan(settings, fence, lambda name, ids: None)
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [
        "reissued.dat",
        "waiting.dat",
    ]
    with transaction(settings) as connection:
        restored = connection.execute(
            text("SELECT restored_files FROM server_registry WHERE node_name = 'a'")
        ).scalar_one()
    assert restored == 2
    run_until_idle(settings, fence)
    assert handled(handler_log) == {"inflight.dat": 1, "reissued.dat": 1, "waiting.dat": 1}
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == [
        "inflight.dat",
        "reissued.dat",
        "waiting.dat",
    ]


def libpq_url(settings: Settings) -> str:
    return (
        make_url(settings.require_database_url())
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
