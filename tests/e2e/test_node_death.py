"""Nothing outlives its fence (invariant 13): a handler, a script and what they started die
with the worker that supervised them, however it dies, and stop by its local deadline when
it freezes.

The witnesses (`held_span`, `held_script_span`) hold a lock while the run, or the child
process it started, lives; a later run that finds the lock taken logs `overlap`. So an
`overlap` line means the new owner started work while something of the old run was alive.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_handover import SCRIPT_SPAN, config, owner
from tests.support.cluster import Cluster, wait_until
from tests.support.handlers import spans
from workers.testing.local_cluster import LocalNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]


def death_cluster(tmp_path: Path, database_url: str, broker_url: str) -> tuple[Cluster, Path]:
    """A cluster whose handler (8 s a file) and interval script both hold a witness lock."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    code = SCRIPT_SPAN.format(root=str(ROOT), log=str(tmp_path / "script.log"))
    code = code.replace("script_span", "held_script_span")
    scripts = f"""
[scripts.long]
argv = ["{sys.executable}", "-c", "{code}"]
interval = 1
timeout = 120
"""
    path = config(tmp_path, inbox, 8.0, scripts)
    path.write_text(path.read_text().replace("handlers:span", "handlers:held_span"))
    cluster = Cluster(
        tmp_path,
        database_url,
        broker_url,
        FAILOVER_CONFIG=str(path),
        TEST_HANDLER_LOG=str(tmp_path / "handled.log"),
        TEST_SPAN_LOG=str(tmp_path / "spans.log"),
        TEST_HANDLER_SECONDS="8",
    )
    return cluster, inbox


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def owner_at_work(
    cluster: Cluster, inbox: Path, tmp_path: Path
) -> tuple[LocalNode, list[psutil.Process]]:
    """a owns both services with b live beside it, and runs a handler and a script: a's
    node and every process below its worker."""
    cluster.start_live("a", "r1")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "r1")
    (inbox / "long.dat").write_text("x")
    wait_until(lambda: spans(tmp_path / "spans.log")["start"], 30, "a's handler to start")
    wait_until(lambda: (tmp_path / "script.log").exists(), 30, "a's script to start")
    node = cluster.running("a")
    return node, descendants(node.pid)


def all_gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def no_overlap_after_takeover(cluster: Cluster, tmp_path: Path) -> None:
    """b takes over and starts the file and the script again, never beside a's."""
    wait_until(lambda: owner(cluster) == "b", 30, "b to take over")
    wait_until(lambda: len(spans(tmp_path / "spans.log")["start"]) >= 2, 60, "b's handler")
    script_log = tmp_path / "script.log"
    wait_until(lambda: script_log.read_text().count("start") >= 2, 60, "b's script")
    assert spans(tmp_path / "spans.log")["overlap"] == []
    assert "overlap" not in script_log.read_text()


@pytest.mark.parametrize("how", ["process alone", "process group"])
def test_a_handler_and_a_script_die_with_their_worker_killed(
    tmp_path, database_url, broker_url, how
):
    cluster, inbox = death_cluster(tmp_path, database_url, broker_url)
    try:
        # Given a owns both services and runs a handler and a script, each with a child
        node, below = owner_at_work(cluster, inbox, tmp_path)
        assert len(below) >= 4  # a guard and a child of each run, and their `sleep`s
        # When a's worker is killed with SIGKILL (its main process alone, as the OOM killer
        # does, or its whole process group)
        if how == "process alone":
            os.kill(node.pid, signal.SIGKILL)
        else:
            node.signal_group(signal.SIGKILL)
        node.popen.wait(timeout=10)
        # Then everything it started dies with it, and b starts both again, never beside them
        wait_until(lambda: all_gone(below), 10, "a's handler and script to die")
        no_overlap_after_takeover(cluster, tmp_path)
    finally:
        cluster.close()


def test_a_frozen_worker_s_children_stop_by_its_local_deadline(tmp_path, database_url, broker_url):
    cluster, inbox = death_cluster(tmp_path, database_url, broker_url)
    try:
        # Given a owns both services and runs a handler and a script
        node, below = owner_at_work(cluster, inbox, tmp_path)
        # When a's worker freezes (SIGSTOP of its process group) past its lease
        node.pause()
        # Then its handler and script die while it is still frozen (their guards enforce
        # the local deadline), and b starts both again, never beside them
        wait_until(lambda: all_gone(below), 20, "a's handler and script to stop")
        no_overlap_after_takeover(cluster, tmp_path)
        assert node.popen.poll() is None
        node.resume()
    finally:
        cluster.close()
