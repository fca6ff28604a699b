"""Work in flight across a change of owner: no two runs of one file (or script) overlap.

The handler (`tests.support.handlers:span`) logs its start and end with the node and a
monotonic stamp, and logs `overlap` when an earlier run of the same file is still alive as
it starts: the check is made by the process itself, at the moment it matters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

from tests.support.cluster import Cluster, wait_until
from tests.support.handlers import handled, spans
from tests.support.proxy import FaultProxy
from tests.support.servers import database_target, database_url_via

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
FILES = 24


def config(tmp_path: Path, inbox: Path, seconds: float, scripts: str = "") -> Path:
    path = tmp_path / "failover.toml"
    path.write_text(
        f"""
folder_batch_size = 3

[[hot_folders]]
name = "inbox"
path = "{inbox}"
handler = "tests.support.handlers:span"
settle_seconds = 0
max_attempts = 10
retry_backoff = 0.1
{scripts}
"""
    )
    return path


def handover_cluster(
    tmp_path: Path, database_url: str, broker_url: str, seconds: float, scripts: str = ""
) -> tuple[Cluster, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cluster = Cluster(
        tmp_path,
        database_url,
        broker_url,
        FAILOVER_CONFIG=str(config(tmp_path, inbox, seconds, scripts)),
        TEST_HANDLER_LOG=str(tmp_path / "handled.log"),
        TEST_SPAN_LOG=str(tmp_path / "spans.log"),
        TEST_HANDLER_SECONDS=str(seconds),
    )
    return cluster, inbox


def owner(cluster: Cluster) -> str:
    return cluster.owners()["folder_monitor"][0] or ""


def in_the_middle(tmp_path: Path) -> None:
    """Wait until some handler has started and not ended: a change now hits work in flight."""

    def busy() -> bool:
        log = tmp_path / "spans.log"
        lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        ended = {(line[1], line[3]) for line in lines if line[0] == "end"}
        started = {(line[1], line[3]) for line in lines if line[0] == "start"}
        return any(psutil.pid_exists(int(pid)) for _name, pid in started - ended)

    wait_until(busy, 30, "a handler in flight")


def all_processed(inbox: Path, count: int) -> None:
    processed = inbox / "processed"
    wait_until(
        lambda: processed.exists() and len(list(processed.iterdir())) >= count,
        120,
        "every file processed",
    )


def test_no_two_runs_of_a_file_overlap_through_moves_stops_drains_and_failbacks(
    tmp_path, database_url, broker_url
):
    cluster, inbox = handover_cluster(tmp_path, database_url, broker_url, 0.6)
    dropped = 0

    def busy() -> None:
        """Drop a wave of files and wait until one is being handled."""
        nonlocal dropped
        for i in range(dropped, dropped + FILES // 4):
            (inbox / f"doc-{i:03}.dat").write_text(str(i))
        dropped += FILES // 4
        in_the_middle(tmp_path)

    try:
        # Given a owns the folder monitor, b is live, and files keep arriving
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        # When, each time in the middle of handling: a move, a graceful stop, a drain and
        # its undrain, and a move back (failback)
        busy()
        assert cluster.cli("move", "folder_monitor", "--to", "b", "--timeout", "30").returncode == 0
        busy()
        assert cluster.running("b").terminate() == 0
        wait_until(lambda: owner(cluster) == "a", 30, "a to take over")
        cluster.start_live("b", "r1")
        cluster.beats("b")
        busy()
        assert cluster.cli("drain", "a", "--timeout", "60").returncode == 0
        assert cluster.cli("undrain", "a").returncode == 0
        busy()
        assert cluster.cli("move", "folder_monitor", "--to", "a", "--timeout", "30").returncode == 0
        all_processed(inbox, dropped)
        # Then no run of a file started while another run of it was alive, and each file
        # was handled to its end exactly once
        found = spans(tmp_path / "spans.log")
        assert found["overlap"] == []
        assert handled(tmp_path / "handled.log") == {f"doc-{i:03}.dat": 1 for i in range(dropped)}
        assert sorted(p.name for p in (inbox / "processed").iterdir()) == [
            f"doc-{i:03}.dat" for i in range(dropped)
        ]
        assert len(cluster.query("SELECT DISTINCT epoch FROM folder_file")) >= 2
    finally:
        cluster.close()


SCRIPT_SPAN = (
    "import os, sys, time; sys.path.insert(0, {root!r}); "
    "from tests.support.handlers import script_span; script_span({log!r})"
)


def test_a_node_cut_from_the_database_kills_its_handler_and_script_before_a_new_owner_starts(
    tmp_path, database_url, broker_url
):
    script_log = tmp_path / "script.log"
    code = SCRIPT_SPAN.format(root=str(ROOT), log=str(script_log))
    scripts = f"""
[scripts.long]
argv = ["{sys.executable}", "-c", "{code}"]
interval = 1
timeout = 120
"""
    cluster, inbox = handover_cluster(tmp_path, database_url, broker_url, 60.0, scripts)
    proxy = FaultProxy(database_target(database_url))
    try:
        # Given a owns both services through a database connection that can be cut, and
        # is running a long handler and a long script
        cluster.start_live(
            "a", "r1", FAILOVER_DATABASE_URL=database_url_via(database_url, proxy.port)
        )
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        (inbox / "long.dat").write_text("x")
        wait_until(lambda: spans(tmp_path / "spans.log")["start"], 30, "a's handler to start")
        wait_until(lambda: script_log.exists(), 30, "a's script to start")
        handler_pid = int((tmp_path / "spans.log").read_text().split()[3])
        script_pid = int(script_log.read_text().split()[1])
        # When a is cut from the database
        proxy.cut()
        # Then a kills its handler and its script by its own lease deadline, and b takes
        # over and starts both again, never while a's are alive
        wait_until(lambda: owner(cluster) == "b", 30, "b to take over")
        wait_until(lambda: len(spans(tmp_path / "spans.log")["start"]) >= 2, 60, "b's handler")
        wait_until(lambda: len(script_log.read_text().splitlines()) >= 2, 60, "b's script")
        assert spans(tmp_path / "spans.log")["overlap"] == []
        assert "overlap" not in script_log.read_text()
        for pid in (handler_pid, script_pid):
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert "lease could not be renewed" in cluster.running("a").log()
    finally:
        cluster.close()
        proxy.close()
