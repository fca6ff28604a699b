"""Invariant 5: a service's side effects commit only while this node owns it at the task's epoch.

    with fenced(settings, Fence("folder_monitor", me, epoch)) as connection:
        connection.execute(...)   # the side effect, in the same transaction

The check takes a share lock on the `service_status` row, so a takeover (which needs the
row's update lock) waits until the side effect has committed, or the side effect sees the
new owner and is refused: the two never interleave. A refused side effect raises
`StaleEpoch`; `run_fenced` logs it and drops the work.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from workers.errors import DatabaseUnavailable, HandingOver, StaleEpoch
from workers.settings import Settings, timing
from workers.settings.process import Identity
from workers.stores.database import Statement, round_trip, transaction
from workers.stores.registration import record_rejection

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Fence:
    """The claim a service task makes: `me` owns `service` at `epoch`.

    With `owner_only=False` (work on a shared queue, run by any node), the claim is that
    the service is still at `epoch` under an owner with a fresh lease. With `starting`, it
    starts new work, which a service handing over refuses (`HandingOver`): what already runs
    finishes under the plain fence.
    """

    service: str
    me: Identity
    epoch: int
    owner_only: bool = True
    starting: bool = False

    def to_start(self) -> Fence:
        """The same claim, for starting new work."""
        return replace(self, starting=True)


def check_fence(connection: Connection, fence: Fence) -> None:
    """Raise `StaleEpoch` unless this incarnation owns the service at that epoch, lease fresh
    (`HandingOver` for a start while the service hands over): the database's own
    `failover_fence`, the one rule a fenced message checks too."""
    try:
        connection.execute(text(FENCE_SQL), _fence_params(fence))
    except DBAPIError as error:
        if isinstance(error.orig, psycopg.Error):
            refusal = _refusal(error.orig)
            if isinstance(refusal, StaleEpoch):
                raise refusal from None
        raise


@contextmanager
def fenced(settings: Settings, fence: Fence) -> Iterator[Connection]:
    """A transaction that is open only while the fence holds; the body's writes commit with it."""
    with transaction(settings) as connection:
        check_fence(connection, fence)
        yield connection


def run_fenced(settings: Settings, fence: Fence, effect: Callable[[Connection], T]) -> T | None:
    """Apply `effect` under the fence; log and drop it (returning None) if the fence fails."""
    try:
        with fenced(settings, fence) as connection:
            return effect(connection)
    except StaleEpoch as refusal:
        reject(settings, fence, refusal)
        return None


def patiently(settings: Settings, fence: Fence, effect: Callable[[Connection], T]) -> T:
    """Apply `effect` under the fence, trying again while the database is unavailable (a
    failover, a restart) for up to `outage_patience`: an outcome already paid for outside
    the database (a handler run, a script run) is recorded when the database is back, not
    lost and redone. A refusal (`StaleEpoch`) is final and raised at once."""

    def under_fence(connection: Connection) -> T:
        check_fence(connection, fence)
        return effect(connection)

    return retrying(settings, under_fence)


def retrying(settings: Settings, effect: Callable[[Connection], T]) -> T:
    """Apply `effect` in a transaction, trying again while the database is unavailable, for
    up to `outage_patience` (for writes fenced by their own rows, such as a file's handler)."""

    def attempt() -> T:
        with transaction(settings) as connection:
            return effect(connection)

    return _again_while_unavailable(attempt, timing.outage_patience(settings))


def _again_while_unavailable(attempt: Callable[[], T], patience: float) -> T:
    """`attempt()`, tried again while the database is unavailable, for up to `patience` s."""
    deadline = time.monotonic() + patience
    pause = 0.2
    while True:
        try:
            return attempt()
        except DatabaseUnavailable as error:
            if time.monotonic() + pause > deadline:
                raise
            log.info("%s; trying again in %.1f s", error, pause)
            time.sleep(pause)
            pause = min(1.0, pause * 2)


FENCE_SQL = (
    "SELECT failover_fence(:service, CAST(:epoch AS bigint), :node, CAST(:incarnation AS uuid), "
    ":owner_only, :starting)"
)
STALE, HANDING_OVER = "FOST1", "FOHO1"
"""The SQLSTATEs `failover_fence` raises (schema revision 0012)."""


def fenced_round_trip(
    settings: Settings, fence: Fence, statements: Sequence[Statement], patient: bool = False
) -> list[list[tuple[Any, ...]]]:
    """`statements` under `fence`, sent with it in one message: one round trip and one
    transaction, with the same share lock as `check_fence` (so `StaleEpoch`, or
    `HandingOver` for a start, rolls them all back). Returns each statement's rows. With
    `patient`, tries again while the database is unavailable, as `patiently` does."""
    message = [(FENCE_SQL, _fence_params(fence)), *statements]

    def attempt() -> list[list[tuple[Any, ...]]]:
        try:
            return round_trip(settings, message)[1:]
        except psycopg.Error as error:
            raise _refusal(error) from None

    patience = timing.outage_patience(settings) if patient else 0.0
    return _again_while_unavailable(attempt, patience)


def persistently(
    settings: Settings, statements: Sequence[Statement]
) -> list[list[tuple[Any, ...]]]:
    """`statements` in one message (one round trip, one transaction), tried again while the
    database is unavailable for up to `outage_patience` (writes fenced by their own rows,
    such as a batch's outcomes). Returns each statement's rows."""
    return _again_while_unavailable(
        lambda: round_trip(settings, statements), timing.outage_patience(settings)
    )


def _fence_params(fence: Fence) -> dict[str, object]:
    return {
        "service": fence.service,
        "epoch": fence.epoch,
        "node": fence.me.name,
        "incarnation": str(uuid.UUID(fence.me.incarnation)),
        "owner_only": fence.owner_only,
        "starting": fence.starting,
    }


def _refusal(error: psycopg.Error) -> Exception:
    """The fence's refusal as `StaleEpoch` or `HandingOver`; any other error as it is."""
    message = error.diag.message_primary or str(error)
    if error.sqlstate == HANDING_OVER:
        return HandingOver(message)
    if error.sqlstate == STALE:
        return StaleEpoch(message)
    return error


def reject(settings: Settings, fence: Fence, refusal: StaleEpoch | str) -> None:
    """The one path for stale work: log it and count it against this node, once per refusal
    (a refusal re-raised through several layers is still one rejected side effect)."""
    if isinstance(refusal, HandingOver):
        log.info("%s", refusal)
        return
    if isinstance(refusal, StaleEpoch):
        if refusal.counted:
            return
        refusal.counted = True
    log.warning("rejected stale work on %s: %s", fence.service, refusal)
    with transaction(settings) as connection:
        record_rejection(connection, fence.me)


TICKS_SQL = """
WITH owned AS (
    SELECT * FROM json_to_recordset(CAST(:owned AS json)) AS o(service TEXT, epoch BIGINT)
), held AS (
    SELECT s.service_type, s.epoch FROM service_status AS s
    JOIN owned AS o ON o.service = s.service_type AND o.epoch = s.epoch
    JOIN server_registry AS r ON r.id = s.service_registry_id
    WHERE r.node_name = :node AND r.incarnation = CAST(:incarnation AS uuid)
      AND failover_lease_holds(r)
    ORDER BY s.service_type
    FOR SHARE OF s
), ticked AS (
    INSERT INTO service_tick (service_type, epoch, node_name, tick_count)
    SELECT service_type, epoch, :node, 1 FROM held
    ON CONFLICT (service_type, epoch) DO UPDATE
        SET tick_count = service_tick.tick_count + 1, last_tick_at = clock_timestamp()
    RETURNING service_type
)
SELECT COALESCE(json_agg(json_build_object(
    'service', o.service, 'held', t.service_type IS NOT NULL,
    'owner', r.node_name, 'epoch', s.epoch, 'handing_over', s.handover_since IS NOT NULL,
    'to', s.handover_to)), '[]'::json)
FROM owned AS o
LEFT JOIN ticked AS t ON t.service_type = o.service
LEFT JOIN service_status AS s ON s.service_type = o.service
LEFT JOIN server_registry AS r ON r.id = s.service_registry_id
"""


def record_ticks(
    settings: Settings, me: Identity, owned: list[tuple[str, int]]
) -> dict[str, StaleEpoch | None]:
    """Fence and tick every owned service in one statement (one round trip).

    Returns, per service, None when its tick committed under the fence, `HandingOver` when it
    did but the service is handing over (no new work), or the `StaleEpoch` that refused it
    (another owner or epoch, or this node's lease no longer fresh).
    """
    return record_ticks_with(settings, me, owned, [])[0]


def record_ticks_with(
    settings: Settings, me: Identity, owned: list[tuple[str, int]], reads: Sequence[Statement]
) -> tuple[dict[str, StaleEpoch | None], list[list[tuple[Any, ...]]]]:
    """`record_ticks`, with `reads` in the same message (still one round trip): what the
    services' work of this beat needs to know. Returns the outcomes and each read's rows."""
    params = {
        "owned": json.dumps([{"service": name, "epoch": epoch} for name, epoch in owned]),
        "node": me.name,
        "incarnation": uuid.UUID(me.incarnation),
    }
    (ticked, *found) = round_trip(settings, [(TICKS_SQL, params), *reads])
    answer = ticked[0][0] if ticked else None
    rows = json.loads(answer) if isinstance(answer, str) else answer
    return _tick_outcomes(me, owned, rows), found


def _tick_outcomes(
    me: Identity, owned: list[tuple[str, int]], rows: Any
) -> dict[str, StaleEpoch | None]:
    epochs = dict(owned)
    outcome: dict[str, StaleEpoch | None] = {}
    for row in rows if isinstance(rows, list) else []:
        service = row["service"]
        if row["held"] and row.get("handing_over"):
            to = row.get("to") or "nobody (a graceful stop)"
            outcome[service] = HandingOver(f"{service} is handing over to {to}")
            continue
        outcome[service] = (
            None
            if row["held"]
            else StaleEpoch(
                f"{me.name} is not the owner of {service} at epoch {epochs[service]} with a fresh "
                f"lease (owner {row['owner'] or 'nobody'}, epoch {row['epoch']})"
            )
        )
    return outcome
