"""Nemesis soak: `python -m tests.benchmarks.nemesis [--seeds N] [--faults F] [--seed S]`.

Runs the nemesis (`tests/nemesis/`) on real servers (FAILOVER_TEST_*_URL, else embedded):
three `failover worker` nodes, each behind proxies of its own, files streaming into a hot
folder and a script on an interval, while a seeded random schedule of F faults (partitions
silent and with resets, kill -9 of a main process alone and of a group, SIGSTOP, SIGTERM,
moves, drains, broker outages and flushes, backends terminated, wall-clock steps) strikes.
Seeds 1..N, or the one `--seed S` to repeat. By default the nemesis starts stores of its own
(a PostgreSQL primary with an asynchronous standby, and a Redis), so a database restart, the
promotion of a standby behind by a second of writes (one per seed), a broker restart and
FLUSHALL are real; `--shared-stores` runs on the test servers with stand-ins for those. Prints each violation's report (seed, schedule,
history window) and a table per seed and in total; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from tests.nemesis.faults import WEIGHTS
from tests.nemesis.run import Outcome, run
from tests.nemesis.stores import own_stores
from tests.support.servers import Servers, clean_broker, fresh_database, start_servers


def trial(seed: int, faults: int, servers: Servers | None) -> Outcome:
    """One seed in a fresh database and broker database, or (`servers` None) on stores of
    its own, where a database restart, a promotion, a broker restart and FLUSHALL are real."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        if servers is None:
            stores = stack.enter_context(own_stores())
            return run(
                seed, faults, Path(tmp), stores.database_url, stores.broker_url, stores=stores
            )
        database_url = stack.enter_context(fresh_database(servers))
        broker_url = stack.enter_context(clean_broker(servers.broker_url))
        return run(seed, faults, Path(tmp), database_url, broker_url)


def row(label: str, kinds: Counter[str], files: int, reruns: int, moves: int, bad: int) -> str:
    """One line of the table."""
    order = [*WEIGHTS, *sorted(set(kinds) - set(WEIGHTS))]
    faults = ", ".join(f"{kind} {kinds[kind]}" for kind in order if kinds[kind])
    return f"| {label} | {sum(kinds.values())} ({faults}) | {files} | {reruns} | {moves} | {bad} |"


def table(outcomes: list[Outcome]) -> str:
    """Per seed and in total: faults by kind, files, re-runs, ownership changes, violations."""
    lines = [
        "| seed | faults (by kind) | files | re-runs | ownership changes | violations |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    total: Counter[str] = Counter()
    for o in outcomes:
        total += o.faults
        lines.append(
            row(str(o.seed), o.faults, o.files, o.reruns, o.ownership_changes, len(o.violations))
        )
    lines.append(
        row(
            "total",
            total,
            sum(o.files for o in outcomes),
            sum(o.reruns for o in outcomes),
            sum(o.ownership_changes for o in outcomes),
            sum(len(o.violations) for o in outcomes),
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="run seeds 1..N")
    parser.add_argument("--faults", type=int, default=40, help="faults per seed")
    parser.add_argument("--seed", type=int, default=None, help="run this one seed only")
    parser.add_argument(
        "--shared-stores",
        action="store_true",
        help="use FAILOVER_TEST_*_URL or embedded servers (store faults become stand-ins) "
        "instead of a PostgreSQL pair and a Redis of the nemesis's own",
    )
    args = parser.parse_args()
    seeds = [args.seed] if args.seed is not None else list(range(1, args.seeds + 1))
    outcomes = []
    with ExitStack() as stack:
        servers = start_servers(stack) if args.shared_stores else None
        for seed in seeds:
            print(f"seed {seed}: {args.faults} faults", flush=True)
            outcome = trial(seed, args.faults, servers)
            outcomes.append(outcome)
            if outcome.violations:
                print(outcome.text, flush=True)
            for note in outcome.notes:
                print(f"  harness note: {note}", flush=True)
    print()
    print(table(outcomes))


if __name__ == "__main__":
    main()
