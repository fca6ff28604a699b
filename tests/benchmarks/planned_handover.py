"""Planned handovers: `python -m tests.benchmarks.planned_handover [--moves N]`.

Two real nodes (a, b) on real servers (FAILOVER_TEST_*_URL, else embedded) move the folder
monitor back and forth with `failover move`, N times with a handler in flight (0.8 s a file)
and N/5 times with nothing in flight. Prints a table: how long each handover waited for
running work (and by how much it exceeded what remained in flight), the operator's command
time, and the runs cut and files started twice (both must be 0). Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import psutil

from tests.e2e.test_planned_handover import drop, owner, planned_cluster
from tests.support.cluster import Cluster, wait_until
from tests.support.handlers import spans
from tests.support.servers import clean_broker, fresh_database, start_servers

SECONDS = 0.8


def remaining(log: Path) -> float:
    """Seconds left of the handler runs in flight now (by their start stamps)."""
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    ended = {line[3] for line in lines if line[0] == "end"}
    starts = [float(line[4]) for line in lines if line[0] == "start" and line[3] not in ended]
    return max((start + SECONDS - time.monotonic() for start in starts), default=0.0)


def in_flight(log: Path) -> bool:
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    ended = {line[3] for line in lines if line[0] == "end"}
    return any(
        line[0] == "start" and line[3] not in ended and psutil.pid_exists(int(line[3]))
        for line in lines
    )


def move(cluster: Cluster, tmp: Path, busy: bool, dropped: int) -> tuple[float, float, int]:
    """One move to the other node: (command seconds, left in flight at the request, dropped)."""
    if busy:
        dropped = drop(tmp, dropped, 2)
        wait_until(lambda: in_flight(tmp / "spans.log"), 30, "a handler in flight")
    left = remaining(tmp / "spans.log") if busy else 0.0
    target = "b" if owner(cluster) == "a" else "a"
    started = time.perf_counter()
    result = cluster.cli("move", "folder_monitor", "--to", target)
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - started, left, dropped


def run(moves: int) -> dict[str, list[float] | int]:
    found: dict[str, list[float] | int] = {"busy": [], "idle": [], "excess": []}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name, ExitStack() as stack:
        servers = start_servers(stack)
        database_url = stack.enter_context(fresh_database(servers))
        broker_url = stack.enter_context(clean_broker(servers.broker_url))
        tmp = Path(tmp_name)
        cluster = planned_cluster(tmp, database_url, broker_url, SECONDS, failback=False)
        stack.callback(cluster.close)
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
        cluster.start_live("b", "r1")
        dropped = 0
        for number in range(moves + moves // 5):
            busy = number < moves
            seconds, left, dropped = move(cluster, tmp, busy, dropped)
            found["busy" if busy else "idle"].append(seconds)  # type: ignore[union-attr]
            print(f"move {number + 1}: {seconds:.2f} s ({'busy' if busy else 'idle'})", flush=True)
            if busy:
                waited = cluster.query(
                    "SELECT handover_waited_s FROM ownership_history ORDER BY id DESC LIMIT 1"
                )[0].handover_waited_s
                found["excess"].append((waited or 0.0) - left)  # type: ignore[union-attr]
            if not busy:
                wait_until(lambda: not in_flight(tmp / "spans.log"), 30, "idle")
        cut = cluster.query("SELECT coalesce(sum(handover_cut), 0) AS n FROM ownership_history")
        found["cut"] = int(cut[0].n)
        starts = Counter(spans(tmp / "spans.log")["start"])
        found["twice"] = sum(1 for count in starts.values() if count > 1)
    return found


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=100)
    args = parser.parse_args()
    found = run(args.moves)
    busy, idle, excess = found["busy"], found["idle"], found["excess"]
    assert isinstance(busy, list) and isinstance(idle, list) and isinstance(excess, list)
    print()
    print(
        "| moves | `failover move` p50 / p95 | handover wait beyond the work left, p50 / p95 / max | runs cut | files started twice |"
    )
    print("| --- | --- | --- | --- | --- |")
    if busy:
        print(
            f"| {len(busy)} with a handler in flight | {statistics.median(busy):.2f} / {p(busy, 0.95):.2f} s "
            f"| {statistics.median(excess):.2f} / {p(excess, 0.95):.2f} / {max(excess):.2f} s "
            f"| {found['cut']} | {found['twice']} |"
        )
    if idle:
        print(
            f"| {len(idle)} with nothing in flight | {statistics.median(idle):.2f} / {p(idle, 0.95):.2f} s "
            "| - | - | - |"
        )


if __name__ == "__main__":
    main()
