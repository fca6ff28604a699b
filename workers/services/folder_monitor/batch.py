"""Handling a batch of claimed files: mark, run, record, move on.

One fenced transaction marks a batch's files as handled by this incarnation, a child
process of their own runs the handler on each (`handler`), and one transaction records the
batch's outcomes and clears the marks: the done marker. Handled files then go into
processed/, failed ones into failed/. A new owner leaves marked files alone until their
handler is done with them or its lease has run out, so two runs never overlap. A failed
handler is tried again with backoff, up to the folder's `max_attempts`.
"""

from __future__ import annotations

import logging
import uuid

from workers.errors import StaleEpoch
from workers.fence import local_fence, local_state
from workers.fence.children import child_environment
from workers.fence.fencing import Fence, fenced_round_trip, persistently, reject
from workers.services.folder_monitor.areas import locate, move_finished
from workers.services.folder_monitor.handler import run_children
from workers.services.folder_monitor.ledger import (
    BATCH_MARK,
    Claim,
    Outcome,
    record_batch_sql,
    start_batch_sql,
)
from workers.settings import HotFolderSettings, Settings

log = logging.getLogger(__name__)


def handle_files(
    settings: Settings, folder: HotFolderSettings, ids: list[int], fence: Fence
) -> int:
    """Handle a batch: mark it (one fenced transaction), run the handler on each file in a
    supervised child process, record every outcome and clear the marks (one transaction);
    returns how many files were handled. The batch's own id makes a start or an outcome
    retried after an ambiguous COMMIT find its marks, and every path records an outcome."""
    if local_fence.holding_off(settings):
        return 0
    batch = str(uuid.uuid4())
    with local_state.holding(fence.me.incarnation, f"{BATCH_MARK}{batch}"):
        return _handle_batch(settings, folder, ids, fence, batch)


def _handle_batch(
    settings: Settings, folder: HotFolderSettings, ids: list[int], fence: Fence, batch: str
) -> int:
    try:
        claims = start_batch(settings, ids, fence, batch)
    except StaleEpoch as refusal:
        reject(settings, fence, refusal)
        return 0
    if not claims:
        return 0
    try:
        environment = child_environment({}, settings.child_env_passthrough)
        outcomes = run_batch(folder, claims, fence, environment)
    except OSError as error:
        log.error("could not run the handler of %s: %s", folder.name, error)
        outcomes = {claim.id: Outcome("untried", f"could not run: {error}") for claim in claims}
    recorded = record_batch(settings, fence, claims, outcomes, batch)
    if len(recorded) < len(claims):
        lost = len(claims) - len(recorded)
        reject(
            settings,
            fence,
            f"{lost} outcomes in {folder.name}: their marks are gone (another handler took "
            "the files after this node's lease ran out, or the database lost the claims)",
        )
    move_finished(folder, [claim for claim in claims if claim.id in recorded], outcomes)
    return sum(1 for claim in claims if outcomes[claim.id].kind != "untried")


def start_batch(settings: Settings, ids: list[int], fence: Fence, batch: str) -> list[Claim]:
    """Mark the batch's files as handled by this incarnation and `batch` (skipping any marked
    by another batch; a retry of this very start finds its own marks): one round trip under
    the fence, tried again while the database is unavailable."""
    (rows,) = fenced_round_trip(settings, fence, [start_batch_sql(ids, fence, batch)], patient=True)
    return sorted((Claim(*row) for row in rows), key=lambda claim: claim.id)


def run_batch(
    folder: HotFolderSettings, claims: list[Claim], fence: Fence, environment: dict[str, str]
) -> dict[int, Outcome]:
    """Each file's outcome: handled before (found in `.handled/`), missing, or run now (a
    `command` gets `environment`)."""
    outcomes: dict[int, Outcome] = {}
    ready = []
    for claim in claims:
        where = locate(folder, claim)
        if where == "handled":
            outcomes[claim.id] = Outcome("processed")
        elif where == "failed":
            outcomes[claim.id] = Outcome("failed", "failed before (found in failed/)")
        elif where is None:
            outcomes[claim.id] = Outcome("failed", "the file is missing, or was replaced")
        else:
            ready.append(claim)
    if ready:
        outcomes.update(run_children(folder, ready, fence, environment))
    return {claim.id: _with_retry(folder, claim, outcomes[claim.id]) for claim in claims}


def _with_retry(folder: HotFolderSettings, claim: Claim, outcome: Outcome) -> Outcome:
    """A handler failure is retried (with backoff) until the folder's `max_attempts`."""
    if outcome.kind != "failed" or claim.attempts >= folder.max_attempts:
        return outcome
    if outcome.error and outcome.error.startswith(("the file is missing", "failed before")):
        return outcome
    delay = folder.retry_backoff * 2 ** (claim.attempts - 1)
    return Outcome("retry", outcome.error, delay)


def record_batch(
    settings: Settings,
    fence: Fence,
    claims: list[Claim],
    outcomes: dict[int, Outcome],
    batch: str,
) -> set[int]:
    """Record every outcome of a batch and clear its marks, in one statement (one round
    trip, tried again while the database is unavailable), fenced by the marks: only files
    this batch still holds. Returns the ids recorded, by this call or by an earlier try of
    it whose COMMIT went through unanswered (the batch id stays behind)."""
    statement = record_batch_sql(fence, claims, outcomes, batch)
    (found_rows,) = persistently(settings, [statement])
    found = {row[0] for row in found_rows}
    _log_outcomes(fence, claims, outcomes, found)
    return found


def _log_outcomes(
    fence: Fence, claims: list[Claim], outcomes: dict[int, Outcome], recorded: set[int]
) -> None:
    for claim in claims:
        outcome = outcomes[claim.id]
        who = f"{claim.name} (epoch {fence.epoch}, attempt {claim.attempts})"
        if claim.id not in recorded:
            continue
        if outcome.kind == "failed":
            log.error("%s failed for good: %s", who, outcome.error)
        elif outcome.kind == "retry":
            log.warning(
                "%s handler failed, retrying in %.1f s: %s", who, outcome.delay, outcome.error
            )
        elif outcome.kind == "untried" and outcome.error:
            log.warning("%s stopped before it was handled: %s", who, outcome.error)
