"""Planned handovers lose no work: a move, a drain, a failback and a graceful stop let the
owner's running handlers and scripts finish, then the service moves (issue 17).

The handler (`tests.support.handlers:span`) logs its start and end; a run cut by a
handover leaves a start without an end, and its file is started again by the new owner.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.test_handover import in_the_middle
from tests.support.cluster import Cluster, wait_until
from tests.support.handlers import spans

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
TIMED_SCRIPT = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from tests.support.handlers import timed_script; timed_script({log!r}, {seconds})"
)


def planned_cluster(
    tmp_path: Path, database_url: str, broker_url: str, seconds: float, failback: bool = True
) -> Cluster:
    """Two services with work always in flight: a folder whose handler takes `seconds` a
    file (with `failback`, `a` preferred and failing back after 1 s), and a script of 1.5 s
    every second."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    code = TIMED_SCRIPT.format(root=str(ROOT), log=str(tmp_path / "script.log"), seconds=1.5)
    config = tmp_path / "failover.toml"
    config.write_text(
        f"""
folder_batch_size = 2

[[hot_folders]]
name = "inbox"
path = "{inbox}"
handler = "tests.support.handlers:span"
settle_seconds = 0

{PLACEMENT if failback else ""}
[scripts.tick]
argv = ["{sys.executable}", "-c", "{code}"]
interval = 1
timeout = 60
"""
    )
    return Cluster(
        tmp_path,
        database_url,
        broker_url,
        FAILOVER_CONFIG=str(config),
        TEST_HANDLER_LOG=str(tmp_path / "handled.log"),
        TEST_SPAN_LOG=str(tmp_path / "spans.log"),
        TEST_HANDLER_SECONDS=str(seconds),
    )


PLACEMENT = """
[placement.folder_monitor]
preferred_nodes = ["a"]
failback = true
failback_dwell = 1
"""


def drop(tmp_path: Path, first: int, count: int) -> int:
    for i in range(first, first + count):
        (tmp_path / "inbox" / f"doc-{i:03}.dat").write_text(str(i))
    return first + count


def owner(cluster: Cluster, service: str = "folder_monitor") -> str | None:
    return cluster.owners()[service][0]


def history(cluster: Cluster) -> list[tuple[str, str, str, float | None, int | None]]:
    return [
        (row.reason, row.to_node or "", row.actor or "", row.handover_waited_s, row.handover_cut)
        for row in cluster.query(
            "SELECT reason, to_node, actor, handover_waited_s, handover_cut "
            "FROM ownership_history ORDER BY id"
        )
    ]


def test_a_move_a_drain_a_failback_and_a_graceful_stop_let_running_work_finish(
    tmp_path, database_url, broker_url
):
    cluster = planned_cluster(tmp_path, database_url, broker_url, 1.0)
    try:
        # Given a owns both services and b is live; files keep the handler busy and the
        # script runs all the time
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        following = drop(tmp_path, 0, 6)
        # When a is drained in the middle of the work (both services go to b)...
        in_the_middle(tmp_path)
        drained = cluster.cli("drain", "a", "--grace", "30")
        assert drained.returncode == 0, drained.stderr
        assert "handing over to b once its running work ends" in drained.stdout
        # ...undrained, so that it takes the folder monitor back (failback) while b works...
        following = drop(tmp_path, following, 6)
        in_the_middle(tmp_path)
        assert cluster.cli("undrain", "a").returncode == 0
        wait_until(lambda: owner(cluster) == "a", 60, "a to fail back")
        # ...stopped gracefully while it handles files, and started again...
        following = drop(tmp_path, following, 6)
        in_the_middle(tmp_path)
        assert cluster.running("a").terminate(timeout=60) == 0
        assert owner(cluster) == "b"
        cluster.start_live("a", "r1")
        wait_until(lambda: owner(cluster) == "a", 60, "a to fail back again")
        # ...and the folder monitor and the scripts are moved by hand in the middle of work
        following = drop(tmp_path, following, 6)
        in_the_middle(tmp_path)
        moved = cluster.cli("move", "folder_monitor", "--to", "b")
        assert moved.returncode == 0, moved.stderr
        assert "after waiting" in moved.stdout and "nothing was cut" in moved.stdout
        script_owner = owner(cluster, "app_script")
        other = "a" if script_owner == "b" else "b"
        moved = cluster.cli("move", "app_script", "--to", other)
        assert moved.returncode == 0, moved.stderr
        wait_until(
            lambda: len(list((tmp_path / "inbox" / "processed").glob("*"))) >= following,
            120,
            "every file processed",
        )
        # Then no run was cut: each file was started once and ended, no script run was
        # killed, and every change of owner that waited says it cut nothing
        found = spans(tmp_path / "spans.log")
        assert found["overlap"] == []
        assert (
            Counter(found["start"])
            == Counter(found["end"])
            == Counter(f"doc-{i:03}.dat" for i in range(following))
        )
        ended = cluster.query("SELECT status FROM script_run WHERE status <> 'running'")
        assert ended and {row.status for row in ended} == {"succeeded"}
        changes = history(cluster)
        assert [change for change in changes if change[4]] == []
        waited = [change for change in changes if change[3] is not None and change[3] > 0.1]
        reasons = {change[0] for change in waited}
        assert {"manual", "failback"} <= reasons, changes
        assert any("draining" in change[2] for change in waited), changes
        assert "stopping once its running work ended" in cluster.running("a").log() or any(
            change[0] == "release" for change in changes
        )
    finally:
        cluster.close()


def test_now_and_a_second_sigterm_still_cut_running_work(tmp_path, database_url, broker_url):
    cluster = planned_cluster(tmp_path, database_url, broker_url, 5.0, failback=False)
    try:
        # Given a owns both services, b is live, and a handler of 5 s runs on a
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        b = cluster.start_live("b", "r1")
        drop(tmp_path, 0, 2)
        in_the_middle(tmp_path)
        # When the folder monitor is moved with --now
        moved = cluster.cli("move", "folder_monitor", "--to", "b", "--now")
        assert moved.returncode == 0, moved.stderr
        # Then the running handler is cut (counted in the history) and its file is
        # started again by b
        assert "were cut" in moved.stdout
        cut = [change for change in history(cluster) if change[4]]
        assert cut and cut[-1][1] == "b"
        wait_until(
            lambda: max(Counter(spans(tmp_path / "spans.log")["start"]).values()) >= 2,
            30,
            "b to start the cut file again",
        )
        # And when b, busy, gets a SIGTERM and then a second one
        drop(tmp_path, 2, 2)
        in_the_middle(tmp_path)
        b.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping once its running work ended" in b.log(), 20, "b to wait")
        b.popen.send_signal(signal.SIGTERM)
        # Then b stops at once, cutting its running handler, and says so in the history
        assert b.popen.wait(timeout=30) == 0
        released = [change for change in history(cluster) if change[0] == "release"]
        assert released and released[-1][4] and released[-1][4] >= 1
    finally:
        cluster.close()
