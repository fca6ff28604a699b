"""`failover demo --headless`: a takeover with epoch + 1, and nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def tmpdir_of_demo() -> Iterator[Path]:
    """A temporary folder of this test's own, the demo's TMPDIR: its folders and processes
    are told apart from those of a demo another test (another xdist worker) runs meanwhile.
    Short, under the system's: the embedded servers' sockets go below it."""
    folder = Path(tempfile.mkdtemp(prefix="fd-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def demo_folders(root: Path) -> set[Path]:
    return set(root.glob("failover-demo-*"))


def demo_env(root: Path, **settings: str) -> dict[str, str]:
    """This environment without any FAILOVER_ setting of the caller's, plus `settings`, with
    temporary files in `root`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAILOVER_")}
    return {**clean, "TMPDIR": str(root), **settings}


def _of_a_demo(process: psutil.Process, root: Path) -> bool:
    """A server or node the demo started: its command line or its settings point into its
    folder."""
    mark = str(root / "failover-demo-")
    if mark in " ".join(process.info["cmdline"] or []):
        return True
    try:
        return mark in process.environ().get("FAILOVER_CONFIG", "")
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def assert_nothing_left(root: Path, folders_before: set[Path]) -> None:
    """No process of the demo is running and no temporary folder of it remains."""
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"]) if _of_a_demo(p, root)]
    assert not leftovers
    assert demo_folders(root) == folders_before


def test_headless_demo_shows_a_takeover_and_leaves_nothing_running(
    database_url, broker_url, tmpdir_of_demo
):
    before = demo_folders(tmpdir_of_demo)
    env = demo_env(
        tmpdir_of_demo, FAILOVER_DATABASE_URL=database_url, FAILOVER_BROKER_URL=broker_url
    )
    result = subprocess.run(
        [sys.executable, "-m", "workers", "demo", "--headless", "--duration", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout
    took = re.search(
        r"killed (\w+) \(SIGKILL\); (\w+) took folder_monitor at epoch (\d+) in ([\d.]+) s", summary
    )
    assert took, summary
    start = re.search(r"start: (\w+) claimed folder_monitor at epoch (\d+)", summary)
    assert start and int(took[3]) == int(start[2]) + 1
    assert took[1] != took[2]
    assert f"restart: {took[1]} came back as a standby" in summary
    assert re.search(
        rf"manual move: folder_monitor moved to {took[1]} at epoch {int(took[3]) + 1}", summary
    )
    assert "processes left running: none" in summary
    files = re.search(
        r"files: (\d+) dropped in the hot folder, (\d+) processed, 0 twice; (\d+) script runs",
        summary,
    )
    assert files and int(files[1]) == int(files[2]) > 0, summary
    # Nothing left: no worker process of the demo, no temporary folder
    assert_nothing_left(tmpdir_of_demo, before)


def test_demo_on_embedded_servers_needs_no_setup(tmpdir_of_demo):
    """The README's first command, as on a fresh machine: no server given at all."""
    before = demo_folders(tmpdir_of_demo)
    env = demo_env(tmpdir_of_demo)
    result = subprocess.run(
        [sys.executable, "-m", "workers", "demo", "--headless"],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "servers: embedded PostgreSQL and Redis" in result.stdout
    assert "took folder_monitor at epoch 2" in result.stdout
    assert "processes left running: none" in result.stdout
    assert_nothing_left(tmpdir_of_demo, before)


def test_a_demo_stopped_by_a_signal_leaves_nothing_behind(database_url, broker_url, tmpdir_of_demo):
    """Closing the terminal (SIGHUP) or a kill (SIGTERM) cleans up like Ctrl-C does."""
    import signal
    import time

    before = demo_folders(tmpdir_of_demo)
    env = demo_env(
        tmpdir_of_demo, FAILOVER_DATABASE_URL=database_url, FAILOVER_BROKER_URL=broker_url
    )
    demo = subprocess.Popen(
        [sys.executable, "-m", "workers", "demo", "--headless", "--duration", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    assert demo.stdout is not None
    for line in demo.stdout:
        if "killing" in line or time.monotonic() > deadline:
            break
    demo.send_signal(signal.SIGHUP)
    output = demo.communicate(timeout=60)[0]
    assert demo.returncode == 130, output
    assert "every process it started is gone" in output
    assert_nothing_left(tmpdir_of_demo, before)
