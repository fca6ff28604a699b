"""The nemesis's checker and schedule, on made-up histories and ledgers (no servers)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.nemesis.checker import Facts, check, killed_pids, report
from tests.nemesis.faults import schedule


def run_events(pid: int, key: str, start: float, end: float | None, node: str = "a") -> list[dict]:
    """A handler run's start (and end) events, as the witness logs them."""
    base = {"kind": "handler", "key": key, "node": node, "pid": pid, "file_id": 1}
    events = [{**base, "event": "start", "mono": start}]
    return events + ([{**base, "event": "end", "mono": end}] if end is not None else [])


def facts(files: list[tuple[str, str]], ticks=(), owners=(), scripts=()) -> Facts:
    """Ledgers with `files` as (name, state) rows."""
    rows = [SimpleNamespace(rel_path=name, state=state) for name, state in files]
    return Facts(files=rows, ticks=list(ticks), owners=list(owners), scripts=list(scripts))


def processed(tmp_path: Path, *names: str) -> Path:
    (tmp_path / "processed").mkdir()
    for name in names:
        (tmp_path / "processed" / name).write_text("")
    return tmp_path


def kinds(violations) -> list[str]:
    return sorted(v.kind for v in violations)


def test_a_clean_history_has_no_violation(tmp_path):
    # Given a run cut short (no end) and its re-run, and a file handled once
    history = (
        run_events(1, "x", 0.0, None) + run_events(2, "x", 5.0, 9.0) + run_events(3, "y", 1, 2)
    )
    inbox = processed(tmp_path, "x", "y")
    # Then nothing is wrong
    assert check(history, ["x", "y"], inbox, facts([("x", "processed"), ("y", "processed")])) == []


def test_an_overlap_a_rerun_after_an_end_and_a_lost_file_are_found(tmp_path):
    # Given a run that found the lock taken, a file run again after its run ended, and a
    # file fed that never came out
    overlap = {"event": "overlap", "kind": "handler", "key": "x", "node": "b", "pid": 2,
               "holder": "1", "mono": 1.0}  # fmt: skip
    history = [*run_events(1, "x", 0.0, 3.0), overlap, *run_events(2, "x", 3.1, 6.0)]
    history += run_events(3, "y", 0.0, 1.0) + run_events(4, "y", 2.0, 3.0)
    inbox = processed(tmp_path, "x", "y")
    ledger = facts([("x", "processed"), ("y", "processed"), ("z", "processing")])
    # Then each is a violation (the overlapping run's late start is not counted twice)
    found = check(history, ["x", "y", "z"], inbox, ledger)
    assert kinds(found) == ["lost", "lost", "lost", "overlap", "rerun"]
    assert "violation: overlap handler x" in report(7, [], found, history)


def test_a_foreign_tick_and_a_slot_run_twice_are_found(tmp_path):
    owners = [SimpleNamespace(service_type="app_script", epoch=2, to_node="a")]
    ticks = [SimpleNamespace(service_type="app_script", epoch=2, node_name="b", tick_count=1)]
    scripts = [
        SimpleNamespace(script="tick", due_at="t1"),
        SimpleNamespace(script="tick", due_at="t1"),
    ]
    found = check([], [], processed(tmp_path), facts([], ticks, owners, scripts))
    assert kinds(found) == ["slot", "tick"]


def test_a_seed_gives_the_same_schedule_with_the_required_faults():
    first, again = (
        schedule(4, 12, ("killmain", "partition")),
        schedule(4, 12, ("killmain", "partition")),
    )
    assert [str(step) for step in first] == [str(step) for step in again]
    assert {"killmain", "partition"} <= {step.fault.kind for step in first}
    assert len(first) == 12


def test_a_rerun_after_a_run_that_ended_as_its_batch_was_killed_is_no_violation(tmp_path):
    # Given a handler that logged its end as the node killed its batch child (pid 40), and
    # the file run again by the next owner
    history = run_events(1, "x", 0.0, 3.0) + run_events(2, "x", 5.0, 9.0)
    history[0]["parent"] = 40
    inbox = processed(tmp_path, "x")
    ledger = facts([("x", "processed")])
    # Then the re-run is a violation unless the node logged that kill
    log = tmp_path / "a-0.log"
    log.write_text("node a: killed the handler of 2 files of inbox (pid 40): its lease ...\n")
    assert kinds(check(history, ["x"], inbox, ledger)) == ["rerun"]
    assert check(history, ["x"], inbox, ledger, killed_pids([log])) == []
