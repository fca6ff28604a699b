"""The folder monitor's ledger: the `folder_file` table and every statement on it.

Each file a scan finds has one open row (`seen`, then `processing` under the owner's epoch
once it settled), and ends `processed`, `failed` or `refused`. A handler's batch marks its
rows (`handler`, `handler_batch`) while it runs, and clears them when it records the
outcomes. The statements are built here, as (SQL, parameters), so that a scan can send many
of them in one fenced round trip (`intake`); the other modules never write SQL of their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    text,
)

from workers.fence import local_state
from workers.fence.fencing import Fence
from workers.services.folder_monitor.names import Arrival, shown_name
from workers.settings import HotFolderSettings, Settings, timing
from workers.stores import store
from workers.stores.database import Statement
from workers.stores.retention import LIMIT, prune_rows
from workers.stores.tables import metadata

log = logging.getLogger(__name__)

folder_file = Table(
    "folder_file",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("folder", String(63), nullable=False),
    Column("rel_path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("epoch", BigInteger),
    Column("node", String(63)),
    Column("attempts", Integer, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("claimed_at", DateTime(timezone=True)),
    Column("dispatched_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("error", Text),
    Column("dev", BigInteger),
    Column("inode", BigInteger),
    Column("handler", Uuid),
    Column("handling_since", DateTime(timezone=True)),
    Column("handler_batch", Uuid),
)


GONE_HANDLER = store.gone_incarnation("f.handler")
"""A file's handler mark holds until its incarnation is gone by the takeover rule."""


BATCH_MARK = "batch-"
"""A batch is in flight on its host while `local_state` holds `batch-<id>`: marks of this
incarnation whose batch is not held are stranded (its outcome was lost), and are cleared."""


class Claim(NamedTuple):
    """A claimed file as the ledger recorded it: the identity it must still have."""

    id: int
    name: str
    size: int | None
    mtime_ns: int | None
    dev: int | None
    inode: int | None
    attempts: int = 0


@dataclass(frozen=True)
class Outcome:
    """What became of one file of a batch: `processed`, `failed`, `retry` (after `delay`),
    or `untried` (never started, or stopped through no fault of its own)."""

    kind: str
    error: str | None = None
    delay: float = 0.0


def _arrays(arrivals: list[Arrival]) -> dict[str, list[Any]]:
    return {
        "names": [a.name for a in arrivals],
        "sizes": [a.size for a in arrivals],
        "mtimes": [a.mtime_ns for a in arrivals],
        "devs": [a.dev for a in arrivals],
        "inodes": [a.inode for a in arrivals],
    }


OPEN = "('seen', 'claimed', 'processing')"
CLAIM_COLUMNS = "id, rel_path, size, mtime_ns, dev, inode, attempts"


def record_and_claim(
    connection: Connection, folder: HotFolderSettings, arrivals: list[Arrival], fence: Fence
) -> list[Claim]:
    """Record new arrivals (a sighting whose file changed starts settling again), forget
    vanished ones, claim the settled ones. A file with no open record is a new arrival, even
    with the name, size and mtime of one processed before (a second copy)."""
    for sql, params in listing_sql(folder, arrivals):
        connection.execute(text(sql), params)
    return claim_settled(connection, folder, fence)


def listing_sql(folder: HotFolderSettings, arrivals: list[Arrival]) -> list[Statement]:
    """The folder's listing as a temporary table with statistics (so the planner can
    hash-join), then the sightings it changes. The table lives for this transaction only
    (`ON COMMIT DROP`): behind PgBouncer in transaction mode the next transaction may run
    on another server connection."""
    params = {"folder": folder.name}
    return [
        (
            "CREATE TEMPORARY TABLE IF NOT EXISTS listing "
            "(name text, size bigint, mtime bigint, dev bigint, inode bigint) ON COMMIT DROP",
            {},
        ),
        (
            "INSERT INTO listing SELECT * FROM unnest(CAST(:names AS text[]), "
            "CAST(:sizes AS bigint[]), CAST(:mtimes AS bigint[]), CAST(:devs AS bigint[]), "
            "CAST(:inodes AS bigint[]))",
            _arrays(arrivals),
        ),
        ("ANALYZE listing", {}),
        (
            "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, dev, inode, state) "
            "SELECT CAST(:folder AS varchar), l.name, l.size, l.mtime, l.dev, l.inode, 'seen' "
            "FROM listing l WHERE NOT EXISTS (SELECT 1 FROM folder_file f "
            f"WHERE f.folder = :folder AND f.rel_path = l.name AND f.state IN {OPEN} "
            "AND f.size = l.size AND f.mtime_ns = l.mtime AND f.inode = l.inode "
            "AND f.dev = l.dev) "
            f"ON CONFLICT (folder, rel_path) WHERE state IN {OPEN} DO UPDATE "
            "SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, dev = EXCLUDED.dev, "
            "inode = EXCLUDED.inode, first_seen_at = clock_timestamp() "
            "WHERE folder_file.state = 'seen'",
            params,
        ),
        (
            "DELETE FROM folder_file WHERE folder = :folder AND state = 'seen' "
            "AND rel_path NOT IN (SELECT name FROM listing)",
            params,
        ),
    ]


def claim_settled(connection: Connection, folder: HotFolderSettings, fence: Fence) -> list[Claim]:
    """Claim, under the epoch, every sighting unchanged for the settle time."""
    sql, params = claim_settled_sql(folder, fence)
    return [Claim(*row) for row in connection.execute(text(sql), params).all()]


def claim_settled_sql(folder: HotFolderSettings, fence: Fence) -> Statement:
    return (
        "UPDATE folder_file SET state = 'processing', epoch = :epoch, node = :node, "
        "claimed_at = clock_timestamp() "
        "WHERE folder = :folder AND state = 'seen' "
        f"AND first_seen_at <= clock_timestamp() - make_interval(secs => :settle) "
        f"RETURNING {CLAIM_COLUMNS}",
        {
            "folder": folder.name,
            "epoch": fence.epoch,
            "node": fence.me.name,
            "settle": folder.settle_seconds,
        },
    )


def record_refusals(
    connection: Connection, folder: HotFolderSettings, refused: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Record refused names once, with why (symlinks, unusable names); return the new ones."""
    sql, params = refusals_sql(folder, refused)
    return [(row.rel_path, row.error) for row in connection.execute(text(sql), params)]


def refusals_sql(folder: HotFolderSettings, refused: list[tuple[str, str]]) -> Statement:
    return (
        "INSERT INTO folder_file (folder, rel_path, size, mtime_ns, state, error, finished_at) "
        "SELECT CAST(:folder AS varchar), r.name, 0, 0, 'refused', r.why, clock_timestamp() "
        "FROM unnest(CAST(:names AS text[]), CAST(:whys AS text[])) AS r(name, why) "
        "WHERE NOT EXISTS (SELECT 1 FROM folder_file f WHERE f.folder = :folder "
        "AND f.rel_path = r.name AND f.state = 'refused') RETURNING rel_path, error",
        {
            "folder": folder.name,
            "names": [shown_name(name) for name, _ in refused],
            "whys": [why for _, why in refused],
        },
    )


def adopt_orphans(connection: Connection, folder: HotFolderSettings, fence: Fence) -> int:
    """Take over the claims of a previous owner. Files its handlers still hold (marked, lease
    fresh) stay with them until they are done: `take_batches` skips marked files."""
    sql, params = adopt_orphans_sql(folder, fence)
    return len(connection.execute(text(sql), params).all())


def adopt_orphans_sql(folder: HotFolderSettings, fence: Fence) -> Statement:
    return (
        "UPDATE folder_file SET epoch = :epoch, node = :node, dispatched_at = NULL "
        "WHERE folder = :folder AND state IN ('claimed', 'processing') AND epoch < :epoch "
        "RETURNING id",
        {"folder": folder.name, "epoch": fence.epoch, "node": fence.me.name},
    )


def release_dead_marks(connection: Connection, folder: HotFolderSettings, fence: Fence) -> int:
    """Clear the handler marks of incarnations gone by the takeover rule (their guards killed
    their handlers), and this incarnation's own marks of batches no longer in flight on this
    host (a killed pool process, an outcome the database lost): those files can be handled
    again."""
    sql, params = release_dead_marks_sql(folder, fence)
    return int(connection.execute(text(sql), params).rowcount)


def release_dead_marks_sql(folder: HotFolderSettings, fence: Fence) -> Statement:
    live = [
        name.removeprefix(BATCH_MARK) for name in local_state.held(fence.me.incarnation, BATCH_MARK)
    ]
    return (
        "UPDATE folder_file AS f SET handler = NULL, handling_since = NULL, "
        "handler_batch = NULL, dispatched_at = NULL "
        "WHERE f.folder = :folder AND f.state = 'processing' "
        "AND f.handler IS NOT NULL AND CASE WHEN f.handler = :me "
        "THEN f.handler_batch IS NULL OR NOT f.handler_batch = ANY(CAST(:live AS uuid[])) "
        f"ELSE {GONE_HANDLER} END",
        {"folder": folder.name, "me": fence.me.incarnation, "live": live},
    )


def undo_claims(connection: Connection, ids: list[int]) -> None:
    """Forget claims whose file changed before it was taken: the next scan sees it anew."""
    connection.execute(
        text(
            "DELETE FROM folder_file WHERE id = ANY(:ids) AND state = 'processing' "
            "AND handler IS NULL"
        ),
        {"ids": ids},
    )


def take_batches(
    connection: Connection, folder: HotFolderSettings, settings: Settings, fence: Fence
) -> list[list[int]]:
    """Mark due files dispatched, up to the parallelism, and return them in batches. A batch
    whose message was lost (never started) is sent again after about a lease."""
    release_dead_marks(connection, folder, fence)
    sql, params = take_batches_sql(folder, settings, fence)
    return in_batches(settings, list(connection.execute(text(sql), params).scalars()))


def take_batches_sql(folder: HotFolderSettings, settings: Settings, fence: Fence) -> Statement:
    """Room is what the parallelism leaves beside the files in flight (marked, or sent
    within about a lease); `release_dead_marks_sql` goes first."""
    lost_after = timing.own_work_lost_after(settings)
    capacity = settings.folder_parallelism * settings.folder_batch_size
    in_flight = (
        "SELECT count(*) FROM folder_file WHERE folder = :folder AND state = 'processing' "
        "AND (handler IS NOT NULL "
        "OR dispatched_at > clock_timestamp() - make_interval(secs => :lost))"
    )
    return (
        "UPDATE folder_file SET dispatched_at = clock_timestamp() WHERE id IN ("
        " SELECT id FROM folder_file WHERE folder = :folder AND state = 'processing'"
        " AND epoch = :epoch AND handler IS NULL"
        " AND (dispatched_at IS NULL"
        "      OR dispatched_at <= clock_timestamp() - make_interval(secs => :lost))"
        " AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())"
        f" ORDER BY id LIMIT greatest(0, :capacity - ({in_flight})) FOR UPDATE SKIP LOCKED)"
        " RETURNING id",
        {"folder": folder.name, "epoch": fence.epoch, "lost": lost_after, "capacity": capacity},
    )


def in_batches(settings: Settings, ids: list[int]) -> list[list[int]]:
    ordered, size = sorted(ids), settings.folder_batch_size
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


BUSY = "FOBZ1"


LOCK_FOLDER = (
    "SELECT pg_try_advisory_xact_lock(hashtext('folder_monitor:' || CAST(:folder AS text))) "
    "OR failover_busy('folder ' || :folder)"
)
"""One scan of a folder at a time: a scan that finds another holding the folder's lock
stops there (`failover_busy` raises `BUSY`, rolling its message back)."""


def sweep_sql(waiting: Collection[int], handled: Collection[int], fence: Fence) -> list[Statement]:
    """Record handled files whose handler is gone without recording them as processed; then
    read the state of every file in both areas (the last statement's rows)."""
    return [
        (
            "UPDATE folder_file AS f SET state = 'processed', error = NULL, "
            "finished_at = clock_timestamp(), handler = NULL, handling_since = NULL, "
            "handler_batch = NULL "
            "WHERE f.id = ANY(CAST(:ids AS bigint[])) AND f.state = 'processing' "
            f"AND (f.handler IS NULL OR {GONE_HANDLER})",
            {"ids": list(handled), "me": fence.me.incarnation},
        ),
        (
            "SELECT id, rel_path, state FROM folder_file WHERE id = ANY(CAST(:ids AS bigint[]))",
            {"ids": list(waiting) + list(handled)},
        ),
    ]


def in_flight(connection: Connection, settings: Settings) -> list[str]:
    """Files a handler runs on, or whose batch was sent and may still start: what a planned
    handover waits for (a claimed file not yet sent is the next owner's to handle)."""
    lost_after = timing.surely_gone_after(settings)
    rows = connection.execute(
        text(
            "SELECT folder || '/' || rel_path FROM folder_file WHERE state = 'processing' "
            "AND (handler IS NOT NULL "
            "OR dispatched_at > clock_timestamp() - make_interval(secs => :lost)) ORDER BY id"
        ),
        {"lost": lost_after},
    ).scalars()
    return list(rows)


def start_batch_sql(ids: list[int], fence: Fence, batch: str) -> Statement:
    """Mark the batch's files as handled by this incarnation and `batch` (skipping any marked
    by another batch; a retry of this very start finds its own marks)."""
    return (
        "UPDATE folder_file SET "
        "attempts = attempts + CASE WHEN handler IS NULL THEN 1 ELSE 0 END, "
        "handler = :me, handler_batch = :batch, "
        "handling_since = clock_timestamp(), dispatched_at = clock_timestamp() "
        "WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'processing' "
        "AND epoch = :epoch "
        "AND (handler IS NULL OR (handler = :me AND handler_batch = :batch)) "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp() "
        "OR handler_batch = :batch) "
        f"RETURNING {CLAIM_COLUMNS}",
        {"ids": ids, "epoch": fence.epoch, "me": fence.me.incarnation, "batch": batch},
    )


def record_batch_sql(
    fence: Fence, claims: list[Claim], outcomes: Mapping[int, Outcome], batch: str
) -> Statement:
    """Record every outcome of a batch and clear its marks, fenced by the marks: only files
    this batch still holds. Its rows: the ids recorded, by this statement or by an earlier
    try of it whose COMMIT went through unanswered (the batch id stays behind)."""
    rows = [
        {"id": claim.id, "kind": outcomes[claim.id].kind, "error": outcomes[claim.id].error,
         "delay": outcomes[claim.id].delay}
        for claim in claims
    ]  # fmt: skip
    statement = (
        "WITH updated AS (UPDATE folder_file AS f SET "
        "state = CASE WHEN o.kind IN ('processed', 'failed') THEN o.kind ELSE f.state END, "
        "error = CASE WHEN o.kind = 'untried' THEN f.error ELSE o.error END, "
        "finished_at = CASE WHEN o.kind IN ('processed', 'failed') "
        "THEN clock_timestamp() END, "
        "attempts = f.attempts - CASE WHEN o.kind = 'untried' THEN 1 ELSE 0 END, "
        "next_attempt_at = CASE WHEN o.kind = 'retry' "
        "THEN clock_timestamp() + make_interval(secs => o.delay) ELSE f.next_attempt_at END, "
        "handler = NULL, handling_since = NULL, dispatched_at = NULL "
        "FROM json_to_recordset(CAST(:outcomes AS json)) "
        "AS o(id bigint, kind text, error text, delay float8) "
        "WHERE f.id = o.id AND f.state IN ('processing') AND f.handler = :me "
        "AND f.handler_batch = :batch RETURNING f.id) "
        "SELECT id FROM updated UNION SELECT id FROM folder_file "
        "WHERE id = ANY(CAST(:ids AS bigint[])) AND handler IS NULL AND handler_batch = :batch"
    )
    params = {
        "outcomes": json.dumps(rows),
        "me": fence.me.incarnation,
        "batch": batch,
        "ids": [claim.id for claim in claims],
    }
    return statement, params


def summaries(connection: Connection, settings: Settings) -> list[dict[str, Any]]:
    """Per hot folder: files waiting, in processing, and processed or failed in the last hour."""
    recent = "finished_at > now() - interval '1 hour'"
    counts = connection.execute(
        text(
            "SELECT folder, "
            "count(*) FILTER (WHERE state = 'seen') AS waiting, "
            "count(*) FILTER (WHERE state IN ('claimed', 'processing')) AS processing, "
            f"count(*) FILTER (WHERE state = 'processed' AND {recent}) AS processed, "
            f"count(*) FILTER (WHERE state = 'failed' AND {recent}) AS failed, "
            "count(*) FILTER (WHERE state = 'refused') AS refused "
            "FROM folder_file GROUP BY folder"
        )
    )
    by_folder = {row.folder: row for row in counts}
    found = []
    for folder in settings.folders():
        row = by_folder.get(folder.name)
        found.append(
            {
                "folder": folder.name,
                "path": str(folder.path),
                "waiting": row.waiting if row else 0,
                "processing": row.processing if row else 0,
                "processed_last_hour": row.processed if row else 0,
                "failed_last_hour": row.failed if row else 0,
                "refused": row.refused if row else 0,
            }
        )
    return found


FINISHED_FILES = "('processed', 'failed', 'refused')"


def prune(connection: Connection, days: float, limit: int = LIMIT) -> int:
    """Delete up to `limit` files processed, failed or refused more than `days` days ago."""
    ended = f"state IN {FINISHED_FILES}"
    return prune_rows(connection, "folder_file", ended, "finished_at", days, limit)


def processed_files(connection: Connection) -> tuple[int, int]:
    """Files processed, and how many distinct names among them (the demo's exactly-once)."""
    row = connection.execute(
        text(
            "SELECT count(*) AS n, count(DISTINCT rel_path) AS names FROM folder_file "
            "WHERE state = 'processed'"
        )
    ).one()
    return int(row.n), int(row.names)
