"""The nemesis's checker: reads the witnessed history and the database after a run.

Violations it looks for (each with the monotonic moment it is seen at, for the window):
- `overlap`: a run of a file or a script started while an earlier one held its lock;
- `interval`: two lock-held intervals of one subject overlap (start to end);
- `rerun`: a file run again after a run of it ended, unless the node killed the process
  that ran it (the batch child, its parent) before it saw the return: a kill is logged by
  the node with that pid, and a handler that ends just as its batch is cut is cut short;
- `lost`: a file fed that is not processed (in processed/ and state 'processed'), or left
  open (seen, claimed, processing) or failed;
- `tick`: a service tick recorded by a node that did not own the service at that epoch;
- `slot`: one script slot (script, due_at) run twice.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WINDOW_SECONDS = 8.0
WINDOWS = 3  # history windows printed: the first violations tell the story


@dataclass(frozen=True)
class Violation:
    """What broke, about what, and when (monotonic, None when the history has no moment)."""

    kind: str
    subject: str
    detail: str
    mono: float | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}"


@dataclass(frozen=True)
class Facts:
    """What the database says after the run."""

    files: list[Any]
    ticks: list[Any]
    owners: list[Any]
    scripts: list[Any]


def read_facts(cluster: Any) -> Facts:
    """Read the ledgers, the ticks and the ownership history (a `LocalCluster`)."""
    return Facts(
        files=cluster.query("SELECT id, rel_path, state, epoch, node, error FROM folder_file"),
        ticks=cluster.query("SELECT service_type, epoch, node_name, tick_count FROM service_tick"),
        owners=cluster.query("SELECT service_type, epoch, to_node FROM ownership_history"),
        scripts=cluster.query(
            "SELECT id, script, node, epoch, trigger, due_at, status FROM script_run"
        ),
    )


def runs(history: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each subject's runs (kind, key) in start order: the start event plus `end` if any."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    by_pid: dict[int, dict[str, Any]] = {}
    for event in history:
        if event.get("kind") == "nemesis":
            continue
        if event["event"] == "start":
            run = {**event, "end": None}
            by_pid[event["pid"]] = run
            found[(event["kind"], event["key"])].append(run)
        elif event["event"] == "end" and event["pid"] in by_pid:
            by_pid[event["pid"]]["end"] = event["mono"]
    return found


def overlaps(history: list[dict[str, Any]]) -> list[Violation]:
    """Every `overlap` a run logged when it found its subject's lock taken."""
    return [
        Violation(
            "overlap",
            f"{e['kind']} {e['key']}",
            f"pid {e['pid']} on {e['node']} started while pid {e['holder']} held the lock",
            e["mono"],
        )
        for e in history
        if e["event"] == "overlap"
    ]


def interval_overlaps(found: dict[tuple[str, str], list[dict[str, Any]]]) -> list[Violation]:
    """Two ended runs of one subject whose lock-held intervals cross."""
    violations = []
    for (kind, key), subject_runs in found.items():
        ended = sorted((r for r in subject_runs if r["end"] is not None), key=lambda r: r["mono"])
        for first, second in itertools.pairwise(ended):
            if second["mono"] < first["end"]:
                detail = f"pid {second['pid']} started before pid {first['pid']} ended"
                violations.append(Violation("interval", f"{kind} {key}", detail, second["mono"]))
    return violations


KILLED = re.compile(r"killed .*\(pid (\d+)\): ")


def killed_pids(logs: list[Path]) -> set[int]:
    """The processes the nodes say they killed (`killed <what> (pid N): <why>`)."""
    found = set()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            match = KILLED.search(line)
            if match:
                found.add(int(match.group(1)))
    return found


def reruns(
    found: dict[tuple[str, str], list[dict[str, Any]]],
    overlapped: set[int],
    killed: Collection[int] = (),
) -> list[Violation]:
    """A file's run that started after an earlier run of it had ended (unless it is a run
    that waited on an overlap, already reported as one, or the earlier run's batch was
    killed before its return was seen)."""
    violations = []
    for (kind, key), subject_runs in found.items():
        if kind != "handler":
            continue
        for earlier, later in itertools.pairwise(subject_runs):
            cut = earlier.get("parent") in killed
            if earlier["end"] is not None and later["pid"] not in overlapped and not cut:
                detail = f"pid {later['pid']} on {later['node']} after pid {earlier['pid']} ended"
                violations.append(Violation("rerun", key, detail, later["mono"]))
    return violations


def lost_files(fed: list[str], inbox: Path, facts: Facts, lossy: bool = False) -> list[Violation]:
    """Files fed that did not end processed, on disk and in the ledger. After a promotion
    of an asynchronous standby (`lossy`), a processed file may have no ledger row: the
    database lost its last commits, as the README says it may; the file is still one."""
    # `<name>.<id>` is a second arrival of `<name>` landing beside the first
    processed = {re.sub(r"\.\d+$", "", p.name) for p in (inbox / "processed").glob("*")}
    states: dict[str, list[str]] = defaultdict(list)
    for row in facts.files:
        states[row.rel_path].append(row.state)
    violations = []
    for name in fed:
        if name not in processed:
            violations.append(Violation("lost", name, "not in processed/"))
        if "processed" not in states[name] and not (lossy and not states[name]):
            violations.append(Violation("lost", name, f"ledger states {states[name]}"))
        open_states = [s for s in states[name] if s in ("seen", "claimed", "processing", "failed")]
        if open_states:
            violations.append(Violation("lost", name, f"left {open_states} in the ledger"))
    return violations


def foreign_ticks(facts: Facts) -> list[Violation]:
    """Ticks recorded under an epoch by a node that was not that epoch's owner."""
    owner = {(row.service_type, row.epoch): row.to_node for row in facts.owners}
    return [
        Violation(
            "tick",
            f"{row.service_type} epoch {row.epoch}",
            f"{row.tick_count} ticks by {row.node_name}, owner {owner.get(key)}",
        )
        for row in facts.ticks
        if owner.get(key := (row.service_type, row.epoch)) != row.node_name
    ]


def double_slots(facts: Facts) -> list[Violation]:
    """A script's scheduled slot run more than once."""
    slots = Counter((row.script, row.due_at) for row in facts.scripts if row.due_at is not None)
    return [
        Violation("slot", f"{script} due {due_at}", f"run {count} times")
        for (script, due_at), count in slots.items()
        if count > 1
    ]


def check(
    history: list[dict[str, Any]],
    fed: list[str],
    inbox: Path,
    facts: Facts,
    killed: Collection[int] = (),
    lossy: bool = False,
) -> list[Violation]:
    """Every violation found in the history and the database (`killed`: the pids the
    nodes logged killing; `lossy`: a promotion may have lost the ledger's last commits)."""
    found = runs(history)
    return [
        *overlaps(history),
        *interval_overlaps(found),
        *reruns(found, {e["pid"] for e in history if e["event"] == "overlap"}, killed),
        *lost_files(fed, inbox, facts, lossy),
        *foreign_ticks(facts),
        *double_slots(facts),
    ]


def render(event: dict[str, Any], origin: float) -> str:
    """One history event as a line of the window (time since the run began)."""
    rest = {k: v for k, v in event.items() if k not in ("event", "kind", "mono", "wall")}
    details = " ".join(f"{k}={v}" for k, v in rest.items() if v is not None)
    return f"{event['mono'] - origin:8.2f}s {event['event']:<14} {event['kind']:<8} {details}"


def window(history: list[dict[str, Any]], moment: float, seconds: float = WINDOW_SECONDS) -> str:
    """The history around `moment`, faults and runs interleaved."""
    origin = history[0]["mono"] if history else 0.0
    return "\n".join(
        render(event, origin) for event in history if abs(event["mono"] - moment) <= seconds
    )


def report(
    seed: int, steps: list[Any], violations: list[Violation], history: list[dict[str, Any]]
) -> str:
    """What to print on a violation: the seed, the schedule, and each violation's window."""
    lines = [f"seed {seed}: {len(violations)} violation(s)", "schedule:"]
    lines += [f"  {number:2}. {step}" for number, step in enumerate(steps, 1)]
    for number, violation in enumerate(violations):
        lines.append(f"violation: {violation}")
        if violation.mono is not None and number < WINDOWS:
            lines.append(window(history, violation.mono))
    return "\n".join(lines)
