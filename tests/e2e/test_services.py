"""The two services end to end: exactly-once intake under failover, fenced scripts, the CLI."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, wait_until
from tests.support.handlers import handled, workers_that_handled

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
FILES = 2000


def config(tmp_path: Path, inbox: Path, scripts: str = "", settle: float = 0.3) -> Path:
    path = tmp_path / "failover.toml"
    path.write_text(
        f"""
[[hot_folders]]
name = "inbox"
path = "{inbox}"
handler = "tests.support.handlers:slow"
settle_seconds = {settle}
max_attempts = 5
retry_backoff = 0.1
{scripts}
"""
    )
    return path


def services_cluster(
    tmp_path: Path, database_url: str, broker_url: str, toml: Path, **env: str
) -> Cluster:
    settings = {
        "FAILOVER_CONFIG": str(toml),
        "TEST_HANDLER_LOG": str(tmp_path / "handled.log"),
        "FAILOVER_FOLDER_BATCH_SIZE": "50",
        **env,
    }
    return Cluster(tmp_path, database_url, broker_url, **settings)


def write_files(inbox: Path, count: int, seconds: float) -> None:
    """Drop `count` files over `seconds`; one in twenty is written slowly, in three pieces."""
    for i in range(count):
        name = inbox / f"doc-{i:05}.dat"
        if i % 20 == 0:
            with name.open("w") as out:
                for piece in range(3):
                    out.write(f"piece {piece} ")
                    out.flush()
                    time.sleep(0.05)
        else:
            name.write_text(f"document {i}")
        time.sleep(seconds / count)


def test_exactly_once_intake_while_the_owner_is_killed_twice(tmp_path, database_url, broker_url):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cluster = services_cluster(tmp_path, database_url, broker_url, config(tmp_path, inbox))
    try:
        # Given three nodes in two regions, a owning the folder monitor
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        cluster.start_live("c", "r2")
        # When 2,000 files arrive over several seconds while the owner is killed twice
        writer = threading.Thread(target=write_files, args=(inbox, FILES, 8.0))
        writer.start()
        for _ in range(2):
            time.sleep(2.0)
            victim, _epoch = cluster.owners()["folder_monitor"]
            cluster.running(victim).crash()
            wait_until(
                lambda v=victim: cluster.owners()["folder_monitor"][0] not in (None, v),
                30,
                "a takeover",
            )
        writer.join()
        processed = inbox / "processed"
        wait_until(
            lambda: processed.exists() and len(list(processed.iterdir())) >= FILES,
            120,
            "every file processed",
        )
        time.sleep(1.0)
        # Then every file is in processed/ exactly once, and nowhere else
        names = {f"doc-{i:05}.dat" for i in range(FILES)}
        assert sorted(p.name for p in processed.iterdir()) == sorted(names)
        assert not [p for p in inbox.iterdir() if p.is_file()]
        assert not list((inbox / ".processing").iterdir())
        # And the ledger has one claim per arrival, all processed
        rows = cluster.query(
            "SELECT rel_path, state, attempts FROM folder_file WHERE state <> 'seen'"
        )
        assert sorted(r.rel_path for r in rows) == sorted(names)
        assert {r.state for r in rows} == {"processed"}
        # And no handler ran twice for a file, except a retry the ledger shows
        attempts = {r.rel_path: r.attempts for r in rows}
        runs = handled(tmp_path / "handled.log")
        assert set(runs) == names
        twice = {name for name, count in runs.items() if count > 1}
        assert all(attempts[name] >= runs[name] for name in twice), {
            n: (runs[n], attempts[n]) for n in twice
        }
        assert len(cluster.query("SELECT DISTINCT epoch FROM folder_file")) >= 2
    finally:
        cluster.close()


SCRIPT = f"""
[scripts.stamp]
argv = ["{sys.executable}", "-c", "print('stamped')"]
interval = 0.5
timeout = 10

[scripts.fails]
argv = ["{sys.executable}", "-c", "import sys; print('bad'); sys.exit(4)"]
timeout = 10
"""


def test_a_paused_owner_claims_no_file_and_starts_no_script_after_it_wakes(
    tmp_path, database_url, broker_url
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cluster = services_cluster(
        tmp_path, database_url, broker_url, config(tmp_path, inbox, SCRIPT, settle=0)
    )
    try:
        a = cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        wait_until(
            lambda: cluster.query("SELECT 1 FROM script_run WHERE node = 'a'"),
            20,
            "a to run a script",
        )
        # When a is frozen, b takes over, files arrive, and a wakes up
        a.pause()
        wait_until(lambda: cluster.owned_by("b"), 30, "b to take over")
        taken_at = cluster.history()[-1].changed_at
        for i in range(20):
            (inbox / f"late-{i}.dat").write_text("x")
        a.resume()
        wait_until(
            lambda: len(list((inbox / "processed").glob("late-*"))) == 20,
            30,
            "the files to be processed",
        )
        for _ in range(5):
            before = cluster.node_row("a").last_heartbeat_at
            wait_until(
                lambda b=before: cluster.node_row("a").last_heartbeat_at > b, 20, "a to beat"
            )
        # Then every late file was claimed by b, and a started no script after the takeover
        claims = cluster.query("SELECT DISTINCT node FROM folder_file WHERE rel_path LIKE 'late-%'")
        assert [row.node for row in claims] == ["b"]
        late_runs = cluster.query(
            "SELECT id FROM script_run WHERE node = 'a' AND started_at > :t", t=taken_at
        )
        assert late_runs == []
        assert cluster.query("SELECT 1 FROM script_run WHERE node = 'b'")
    finally:
        cluster.close()


def _ran(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str] | None:
    """The run's outcome, or None if it was refused because a run was in progress."""
    if result.returncode == 1 and "still in progress" in result.stderr:
        return None
    assert result.returncode == 0, result.stderr
    return result


def test_run_script_on_demand_with_its_exit_codes(tmp_path, database_url, broker_url):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cluster = services_cluster(tmp_path, database_url, broker_url, config(tmp_path, inbox, SCRIPT))
    try:
        # With no node at all, there is no owner to run it
        nobody = cluster.cli("run-script", "fails")
        assert nobody.returncode == 1 and "no node owns app_script" in nobody.stderr
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        # (stamp also runs every 0.5 s: a request that finds a run in progress is refused,
        # and the operator asks again)
        ok = wait_until(
            lambda: _ran(cluster.cli("run-script", "stamp", "--wait")), 30, "stamp to run"
        )
        assert "stamped" in ok.stdout and "succeeded, exit code 0 on a" in ok.stdout
        bad = cluster.cli("run-script", "fails", "--wait")
        assert bad.returncode == 1
        assert "bad" in bad.stdout and "failed, exit code 4" in bad.stdout
        unknown = cluster.cli("run-script", "rm-rf")
        assert unknown.returncode == 2 and "unknown script 'rm-rf'" in unknown.stderr
        assert len(unknown.stderr.strip().splitlines()) == 1
        manual = cluster.query(
            "SELECT script, trigger, status FROM script_run WHERE trigger = 'manual' ORDER BY id"
        )
        assert [tuple(r) for r in manual] == [
            ("stamp", "manual", "succeeded"),
            ("fails", "manual", "failed"),
        ]
        status = cluster.cli("status", "--json")
        import json

        report = json.loads(status.stdout)
        assert {s["script"] for s in report["scripts"]} == {"stamp", "fails"}
        assert report["folders"][0]["folder"] == "inbox"
    finally:
        cluster.close()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            '[[hot_folders]]\nname = "x"\npath = "/nonexistent/folder"\nhandler = "tests.support.handlers:record"\n',
            "is not a directory",
        ),
        (
            '[[hot_folders]]\nname = "x"\npath = "/tmp"\nhandler = "no.such.module:run"\n',
            "cannot be imported",
        ),
        (
            '[scripts.nightly]\nargv = ["true"]\ncron = "99 * * * *"\n',
            "not a valid cron expression",
        ),
    ],
)
def test_bad_service_configuration_stops_the_node_at_start(tmp_path, extra, named, cluster):
    toml = tmp_path / "bad.toml"
    toml.write_text(extra)
    cluster.configure(FAILOVER_CONFIG=str(toml))
    node = cluster.start("a", "r1")
    assert node.popen.wait(timeout=60) == 2
    output = node.log().strip()
    assert named in output and len(output.splitlines()) == 1, output


def test_shared_processing_queue_spreads_handlers_over_the_nodes(
    tmp_path, database_url, broker_url
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    toml = config(tmp_path, inbox, settle=0)
    cluster = services_cluster(
        tmp_path,
        database_url,
        broker_url,
        toml,
        FAILOVER_FOLDER_DISPATCH="shared",
        FAILOVER_FOLDER_BATCH_SIZE="5",
        TEST_HANDLER_SECONDS="0.02",
    )
    try:
        a = cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        b = cluster.start_live("b", "r1")
        for i in range(200):
            (inbox / f"shared-{i:03}.dat").write_text("x")
        processed = inbox / "processed"
        wait_until(
            lambda: processed.exists() and len(list(processed.iterdir())) == 200,
            60,
            "all files processed",
        )
        # Claims stay with the owner; the handlers ran on more than one node
        assert [r.node for r in cluster.query("SELECT DISTINCT node FROM folder_file")] == ["a"]
        nodes = {a.pid, b.pid}
        assert workers_that_handled(tmp_path / "handled.log", nodes) == nodes
    finally:
        cluster.close()


def test_a_scheduled_run_missed_during_a_failover_runs_once_afterwards(
    tmp_path, database_url, broker_url
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    every_second = SCRIPT.replace("interval = 0.5", "interval = 1.0")
    cluster = services_cluster(
        tmp_path, database_url, broker_url, config(tmp_path, inbox, every_second)
    )
    try:
        a = cluster.start_live("a", "r1")
        wait_until(
            lambda: cluster.query("SELECT 1 FROM script_run WHERE node = 'a'"), 20, "a to run stamp"
        )
        # When the owner dies and nobody runs the service for several scheduled slots
        a.crash()
        time.sleep(4.0)
        cluster.start_live("b", "r1")
        wait_until(
            lambda: cluster.query("SELECT 1 FROM script_run WHERE node = 'b'"), 30, "b to run stamp"
        )
        time.sleep(2.5)
        # Then the new owner ran the missed slots once, then went on with the schedule
        runs = cluster.query(
            "SELECT trigger FROM script_run WHERE node = 'b' AND script = 'stamp' ORDER BY id"
        )
        triggers = [r.trigger for r in runs]
        assert triggers[0] == "missed" and triggers.count("missed") == 1, triggers
        assert "schedule" in triggers[1:], triggers
    finally:
        cluster.close()
