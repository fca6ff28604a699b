"""Handover soak: `python -m tests.benchmarks.handover [--trials N]`.

Runs the end-to-end scenarios of `tests/e2e/test_handover.py` N times each (default 20) on
real servers (FAILOVER_TEST_*_URL, else embedded), with real worker processes:
- moves, a graceful stop, a drain and a failback, each in the middle of handling files
  that take 0.6 s each: no two runs of one file may overlap, each file handled once;
- a node cut from the database while it runs a long handler and a long script: both killed
  by its own deadline before the new owner starts them again.
Prints a table of trials passed and failed, with the first failure of each; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tests.e2e import test_handover
from tests.support.servers import clean_broker, fresh_database, start_servers

SCENARIOS: dict[str, Callable[[Path, str, str], None]] = {
    "move, stop, drain, failback": (
        test_handover.test_no_two_runs_of_a_file_overlap_through_moves_stops_drains_and_failbacks
    ),
    "cut from the database": (
        test_handover.test_a_node_cut_from_the_database_kills_its_handler_and_script_before_a_new_owner_starts
    ),
}


def trial(scenario: Callable[[Path, str, str], None], servers: object) -> str | None:
    """One run of a scenario in a fresh database and broker; the failure, or None."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        database_url = stack.enter_context(fresh_database(servers))  # type: ignore[arg-type]
        broker_url = stack.enter_context(clean_broker(servers.broker_url))  # type: ignore[attr-defined]
        try:
            scenario(Path(tmp), database_url, broker_url)
        except AssertionError as failure:
            return str(failure).splitlines()[0][:100]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack:
        servers = start_servers(stack)
        for name, scenario in SCENARIOS.items():
            started, failures = time.perf_counter(), []
            for number in range(args.trials):
                failure = trial(scenario, servers)
                print(f"{name} #{number + 1}: {failure or 'passed'}", flush=True)
                if failure:
                    failures.append(failure)
            seconds = time.perf_counter() - started
            first = failures[0] if failures else "-"
            rows.append(f"| {name} | {args.trials} | {len(failures)} | {seconds:.0f} | {first} |")
    print()
    print("| scenario | trials | failed | seconds | first failure |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
