"""One nemesis run: start the cluster, apply a seeded schedule under load, settle, check."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.nemesis.checker import Violation, check, killed_pids, read_facts, report
from tests.nemesis.faults import OWN_STORES_REQUIRED, Step, schedule
from tests.nemesis.harness import Harness, Workload, read_history
from tests.nemesis.stores import OwnStores


@dataclass
class Outcome:
    """What a run did and found: the schedule, the counts, the violations and the report."""

    seed: int
    steps: list[Step]
    violations: list[Violation] = field(default_factory=list)
    files: int = 0
    reruns: int = 0
    ownership_changes: int = 0
    notes: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def faults(self) -> Counter[str]:
        return Counter(step.fault.kind for step in self.steps)


def apply_schedule(harness: Harness, steps: list[Step]) -> None:
    """Apply each step in turn, logging its start and end to the history."""
    for number, step in enumerate(steps, 1):
        time.sleep(step.gap)
        harness.log("fault", number=number, fault=str(step.fault))
        try:
            step.fault.apply(harness)
        except Exception as error:  # a harness problem: noted, the run goes on
            harness.notes.append(f"step {number} {step.fault}: {type(error).__name__}: {error}")
        harness.log("healed", number=number)
        print(f"  step {number}/{len(steps)}: {step}", flush=True)


def run(
    seed: int,
    count: int,
    folder: Path,
    database_url: str,
    broker_url: str,
    required: tuple[str, ...] = (),
    workload: Workload | None = None,
    stores: OwnStores | None = None,
) -> Outcome:
    """Run `count` faults drawn from `seed` on a fresh three-node cluster; check it. With
    `stores` (the nemesis's own), the database and broker faults are real and one
    promotion of an asynchronous standby is among them."""
    if stores is not None:
        required = (*required, *OWN_STORES_REQUIRED)
    steps = schedule(seed, count, required)
    harness = Harness(folder, database_url, broker_url, workload, stores)
    try:
        harness.start_all()
        apply_schedule(harness, steps)
        harness.settle()
        return outcome(harness, seed, steps)
    finally:
        harness.close()


def outcome(harness: Harness, seed: int, steps: list[Step]) -> Outcome:
    """Check the history and the database and count what happened."""
    history = read_history(harness.history)
    facts = read_facts(harness.cluster)
    fed = list(harness.feeder.names)
    killed = killed_pids(sorted(harness.folder.glob("*.log")))
    lossy = any(step.fault.kind == "promotion" for step in steps)
    violations = check(history, fed, harness.inbox, facts, killed, lossy)
    starts = sum(1 for e in history if e["event"] == "start" and e["kind"] == "handler")
    return Outcome(
        seed=seed,
        steps=steps,
        violations=violations,
        files=len(fed),
        reruns=starts - len({e["key"] for e in history if e["event"] == "start"
                             and e["kind"] == "handler"}),
        ownership_changes=len(facts.owners),
        notes=list(harness.notes),
        text=report(seed, steps, violations, history),
    )  # fmt: skip
