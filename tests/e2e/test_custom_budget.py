"""A hung custom handler costs only its own runs: the folder monitor keeps scanning and the
scripts keep running on the same owner, the handler is cut at its timeout, and the turns it
made miss are said in the log."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.e2e.test_services import config, services_cluster
from tests.support.cluster import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HANGING = '''
import os
import time


def hang(fence):
    """Say which process runs, then never return."""
    with open(os.environ["STUCK_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    time.sleep(3600)
'''

SERVICES = f"""
[scripts.stamp]
argv = ["{sys.executable}", "-c", "print('stamped')"]
interval = 0.5

[services.stuck_sync]
handler = "stuck_jobs:hang"
timeout = 2
"""


def hanging_cluster(tmp_path: Path, database_url: str, broker_url: str, inbox: Path) -> Cluster:
    (tmp_path / "stuck_jobs.py").write_text(HANGING)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    toml = config(tmp_path, inbox, SERVICES, settle=0)
    return services_cluster(
        tmp_path, database_url, broker_url, toml, PYTHONPATH=path, STUCK_LOG=str(tmp_path / "stuck")
    )


def handler_pids(tmp_path: Path) -> list[int]:
    stuck = tmp_path / "stuck"
    return [int(pid) for pid in stuck.read_text().split()] if stuck.exists() else []


def script_runs(cluster: Cluster) -> int:
    return int(
        cluster.query("SELECT count(*) AS n FROM script_run WHERE status = 'succeeded'")[0].n
    )


def processed(inbox: Path) -> int:
    done = inbox / "processed"
    return len(list(done.iterdir())) if done.exists() else 0


def test_a_hung_custom_handler_is_cut_and_holds_up_nothing_else(tmp_path, database_url, broker_url):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cluster = hanging_cluster(tmp_path, database_url, broker_url, inbox)
    try:
        # Given a owns every service, and its custom handler hangs
        a = cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        wait_until(lambda: handler_pids(tmp_path), 20, "the handler to start")
        runs = script_runs(cluster)
        # When files arrive while it hangs
        for i in range(5):
            (inbox / f"while-hung-{i}.dat").write_text("x")
        # Then the folder monitor takes them, and the scheduled script goes on running
        wait_until(lambda: processed(inbox) == 5, 20, "the files processed")
        wait_until(lambda: script_runs(cluster) >= runs + 3, 20, "three more script runs")
        # And the handler is cut at its timeout and runs again in a new process
        first = handler_pids(tmp_path)[0]
        wait_until(lambda: len(set(handler_pids(tmp_path))) >= 2, 30, "a second run")
        assert not os.path.exists(f"/proc/{first}")
        log = a.log()
        assert "killed the handler stuck_jobs:hang of service stuck_sync (timeout 2 s)" in log
        assert "its timeout passed" in log
        # And the turns it missed meanwhile were said
        assert "node a: service stuck_sync: skipped a run: the previous one" in log
    finally:
        cluster.close()
