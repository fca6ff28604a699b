"""SQL that reads the cluster snapshot and applies decisions under row locks.

Times are the database's own (`clock_timestamp()`, which, unlike `now()`, moves on after
a lock wait). Every change of owner goes through `acquire` or `release_services`, which
lock the `service_status` row; the table's trigger then raises the epoch check and writes
the history row, so no code path can change an owner silently.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, literal_column, select, update

from workers.decision.decide import Acquire, MarkInactive, Policy, grace_ended, refusal_to_acquire
from workers.decision.placement import move_refusal
from workers.decision.snapshot import Node, Service, Snapshot
from workers.errors import Refused
from workers.settings import Settings
from workers.settings.process import Identity
from workers.stores.database import HEARTBEAT as HEARTBEAT_ENGINE
from workers.stores.database import encrypted, one_round_trip, transaction
from workers.stores.tables import server_registry as nodes_t
from workers.stores.tables import service_status as services_t

NOW = func.clock_timestamp()


JUDGE = (
    "(SELECT lease_started_at FROM server_registry AS judge WHERE judge.incarnation = :me "
    "AND failover_lease_holds(judge))"
)
"""SQL: the start of this incarnation's judging window while its own lease holds, else NULL
(`:me` bound to this incarnation): what a takeover requires of the node that judges."""


def gone_incarnation(column: str) -> str:
    """SQL: the incarnation in `column` is gone by the takeover rule (invariants 3 and 4):
    this incarnation's own lease holds, and the other's lease ran out after this one's
    judging window opened. Until then its work on files and scripts is still its own,
    stopped or not, whatever a promoted standby's clock or a lost renewal says."""
    return f"failover_incarnation_gone({column}, CAST(:me AS uuid))"


def own_work_lost(since: str, seconds: str) -> str:
    """SQL: this incarnation's own work that began at `since` has had `seconds` (a bound
    parameter) to end, counted, as a takeover would, from when its own lease last began to
    hold (a lost renewal or a promoted standby's clock does not make its work look old)."""
    return (
        f"({JUDGE} IS NOT NULL AND greatest({since}, {JUDGE}) "
        f"+ make_interval(secs => {seconds}) < clock_timestamp())"
    )


STALE_INCARNATION = "this process is no longer the node's current incarnation"
LEASE_EXPIRES = nodes_t.c.last_heartbeat_at + nodes_t.c.lease_timeout_s * literal_column(
    "interval '1 second'"
)


@dataclass(frozen=True)
class Registration:
    """What a node declares about itself when it starts."""

    name: str
    region: str
    lease_timeout: float
    heartbeat_interval: float
    ip_address: str | None = None
    port_number: str | None = None
    app_context: str | None = None
    hostname: str | None = None
    pid: int | None = None
    retention_days: float = 7.0


def database_now(connection: Connection) -> datetime:
    return connection.execute(select(NOW)).scalar_one()  # type: ignore[no-any-return]


def _node(row: Mapping[Any, Any]) -> Node:
    """A registry row, read by SQLAlchemy or returned as JSON by `failover_heartbeat`."""
    return Node(
        id=row["id"],
        name=row["node_name"],
        region=row["region"],
        is_active=row["is_active"],
        last_heartbeat_at=_time(row["last_heartbeat_at"]),
        lease_started_at=_time(row["lease_started_at"]),
        lease_timeout=row["lease_timeout_s"],
        draining=row["draining"],
        stopped_at=_maybe_time(row["stopped_at"]),
        incarnation=str(row["incarnation"]),
        app_healthy=row["app_healthy"],
        last_verdict=row["last_verdict"],
        drain_grace=row.get("drain_grace_s"),
        joining_until=_maybe_time(row.get("joining_until")),
    )


def _service(row: Mapping[Any, Any]) -> Service:
    """A `service_status` row, read by SQLAlchemy or returned as JSON."""
    return Service(
        name=row["service_type"],
        owner_id=row["service_registry_id"],
        epoch=row["epoch"],
        acquired_at=_maybe_time(row["acquired_at"]),
        reason=row["acquired_reason"],
        home_region=row["home_region"],
        handover_to=row.get("handover_to"),
        handover_since=_maybe_time(row.get("handover_since")),
        handover_until=_maybe_time(row.get("handover_until")),
        handover_reason=row.get("handover_reason"),
    )


def _time(value: datetime | str) -> datetime:
    """A timestamp as SQLAlchemy gives it, or as PostgreSQL writes it in JSON (ISO 8601)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _maybe_time(value: datetime | str | None) -> datetime | None:
    return None if value is None else _time(value)


def read_nodes(connection: Connection) -> tuple[Node, ...]:
    rows = connection.execute(select(nodes_t).order_by(nodes_t.c.node_name))
    return tuple(_node(row._mapping) for row in rows)


@dataclass(frozen=True)
class Latency:
    """What a node measured of its distance to the stores, in milliseconds (None: unknown)."""

    db_round_trip_ms: float | None = None
    broker_round_trip_ms: float | None = None
    heartbeat_cycle_ms: float | None = None


ASYNC_COMMIT = "SET LOCAL synchronous_commit = off; "
"""A heartbeat does not wait for its renewal to reach the disk (or a synchronous standby):
a renewal lost in a crash or a failover only makes the lease look older than it is, which
the outage rule already makes safe, and no decision is taken on a renewal alone (changes
of owner and fenced work commit in transactions of their own). Saves a WAL flush per beat.
"""

HEARTBEAT_SQL = ASYNC_COMMIT + (
    "SELECT failover_heartbeat(%(node)s, %(incarnation)s, %(healthy)s, "
    "%(db)s::real, %(broker)s::real, %(cycle)s::real, %(everyone)s, %(broker_server)s::text, "
    "%(database_encrypted)s::boolean, %(broker_encrypted)s::boolean)"
)


def heartbeat(
    settings: Settings,
    me: Identity,
    healthy: bool,
    latency: Latency,
    broker_server: str | None = None,
    broker_encrypted: bool | None = None,
) -> Snapshot | None:
    """One heartbeat's database work in one round trip: renew (if healthy) and read. The
    database records which server answered; `broker_server` is the broker the beat reached,
    and the node says whether its connections to both stores are encrypted.

    Returns the snapshot to decide on, or None when this incarnation is stopped or replaced.
    """
    params = {
        "node": me.name,
        "incarnation": uuid.UUID(me.incarnation),
        "healthy": healthy,
        "db": latency.db_round_trip_ms,
        "broker": latency.broker_round_trip_ms,
        "cycle": latency.heartbeat_cycle_ms,
        "everyone": settings.policy().any_failback(),
        "broker_server": broker_server,
        "database_encrypted": encrypted(settings.require_database_url()),
        "broker_encrypted": broker_encrypted,
    }
    found = one_round_trip(settings, HEARTBEAT_SQL, params, HEARTBEAT_ENGINE)
    answer = json.loads(found) if isinstance(found, str) else found
    if not isinstance(answer, dict) or not answer["renewed"]:
        return None
    return snapshot_from_json(answer)


def snapshot_from_json(answer: dict[str, Any]) -> Snapshot:
    """The snapshot `failover_heartbeat` returns, as the decision code sees it."""
    nodes = tuple(_node(row) for row in answer["nodes"])
    services = tuple(_service(row) for row in answer["services"])
    return Snapshot(_time(answer["now"]), nodes, services, complete=bool(answer["complete"]))


APPLY_SQL = """
WITH dead AS (
    SELECT r.id FROM server_registry AS r
    JOIN json_to_recordset(%(marks)s::json) AS m(node TEXT, last_heartbeat_at TIMESTAMPTZ)
        ON r.node_name = m.node AND r.last_heartbeat_at = m.last_heartbeat_at
    WHERE r.is_active
    FOR UPDATE OF r SKIP LOCKED
), marked AS (
    UPDATE server_registry AS s SET is_active = false FROM dead WHERE s.id = dead.id
    RETURNING s.node_name
), verdict AS (
    UPDATE server_registry SET last_verdict = %(verdict)s
    WHERE node_name = %(node)s AND incarnation = %(incarnation)s AND stopped_at IS NULL
)
SELECT COALESCE(json_agg(node_name), '[]'::json) FROM marked
"""


def apply_marks_and_verdict(
    settings: Settings, me: Identity, marks: list[MarkInactive], verdict: str
) -> list[str]:
    """Mark dead peers inactive (unless they renewed since) and store the verdict, in one
    round trip; returns the names actually marked. A peer another judge is marking right now
    is skipped, not waited for: in a large cluster many see the same dead node."""
    params = {
        "marks": json.dumps(
            [{"node": m.node, "last_heartbeat_at": m.last_heartbeat_at.isoformat()} for m in marks]
        ),
        "verdict": verdict,
        "node": me.name,
        "incarnation": uuid.UUID(me.incarnation),
    }
    found = one_round_trip(settings, APPLY_SQL, params, HEARTBEAT_ENGINE)
    marked = json.loads(found) if isinstance(found, str) else found
    return [str(name) for name in marked] if isinstance(marked, list) else []


def read_snapshot(connection: Connection) -> Snapshot:
    """The whole registry and every service, with the database time after reading them."""
    nodes = read_nodes(connection)
    services = connection.execute(select(services_t).order_by(services_t.c.service_type))
    return Snapshot(
        database_now(connection), nodes, tuple(_service(row._mapping) for row in services)
    )


HOLDS_NAME = (
    "({t}.is_active AND failover_lease_holds({t})) "
    "OR ({t}.stopped_at IS NULL AND COALESCE({t}.joining_until > clock_timestamp(), false))"
)
"""SQL: the row's process holds the node's name: it is live, or still joining (starting up,
not yet live) within the hold its starting process keeps pushing forward."""

JOINING_VERDICT = "joining: not live until its first heartbeat through its consumer"


def name_holder(connection: Connection, name: str, lock: bool = False) -> str | None:
    """Why the name cannot be registered now (a live or joining process holds it), or None."""
    query = select(
        nodes_t,
        (LEASE_EXPIRES - NOW).label("left"),
        (nodes_t.c.joining_until - NOW).label("joining_left"),
    ).where(nodes_t.c.node_name == name)
    row = connection.execute(query.with_for_update() if lock else query).first()
    if row is None or not _holds_name(row):
        return None
    if _is_joining(row):
        state = (
            f"joining: not live yet, holds its name {row.joining_left.total_seconds():.1f} s more"
        )
    else:
        state = f"lease {row.left.total_seconds():.1f} s left"
    return (
        f"node {name} is already running (pid {row.pid} on {row.hostname or '?'}, {state}): "
        "stop it, or wait for its lease to expire if that process is gone"
    )


REGISTER_SQL = f"""
WITH registered AS (
    INSERT INTO server_registry AS r (
        node_name, draining, region, ip_address, port_number, app_context, hostname, pid,
        is_active, incarnation, started_at, last_heartbeat_at, lease_started_at,
        lease_timeout_s, heartbeat_interval_s, stopped_at, app_healthy, last_verdict,
        joining_until)
    VALUES (
        %(node)s, false, %(region)s, %(ip_address)s, %(port_number)s, %(app_context)s,
        %(hostname)s, %(pid)s, false, %(incarnation)s, clock_timestamp(), clock_timestamp(),
        clock_timestamp(), %(lease)s, %(interval)s, NULL, NULL, %(verdict)s,
        clock_timestamp() + %(lease)s * interval '1 second')
    ON CONFLICT (node_name) DO UPDATE SET
        region = EXCLUDED.region, ip_address = EXCLUDED.ip_address,
        port_number = EXCLUDED.port_number, app_context = EXCLUDED.app_context,
        hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, is_active = false,
        incarnation = EXCLUDED.incarnation, started_at = EXCLUDED.started_at,
        last_heartbeat_at = EXCLUDED.last_heartbeat_at,
        lease_started_at = EXCLUDED.lease_started_at,
        lease_timeout_s = EXCLUDED.lease_timeout_s,
        heartbeat_interval_s = EXCLUDED.heartbeat_interval_s, stopped_at = NULL,
        app_healthy = NULL, last_verdict = EXCLUDED.last_verdict,
        joining_until = EXCLUDED.joining_until
    WHERE NOT ({HOLDS_NAME.format(t="r")})
    RETURNING r.id
), pruned AS (
    DELETE FROM server_registry AS old
    WHERE EXISTS (SELECT 1 FROM registered) AND old.node_name <> %(node)s
      AND COALESCE(old.stopped_at, old.last_heartbeat_at)
          < clock_timestamp() - %(retention_days)s * interval '1 day'
      AND NOT EXISTS (SELECT 1 FROM service_status AS s WHERE s.service_registry_id = old.id)
), declared AS (
    INSERT INTO service_status (service_type, epoch)
    SELECT unnest(%(services)s::text[]), 0 WHERE EXISTS (SELECT 1 FROM registered)
    ON CONFLICT (service_type) DO NOTHING
)
SELECT EXISTS (SELECT 1 FROM registered)
"""
"""Registration in one statement (one round trip from a far region): take the name unless a
live or joining process holds it (checked on the conflicting row under its lock, so two
processes starting at once cannot both take it), forget long-stopped nodes, and give each
declared service its row. The node starts joining: it holds its name, is not live, and
owns nothing until its first heartbeat through its consumer makes it live."""


def _registration_params(
    node: Registration, incarnation: str, services: Sequence[str]
) -> dict[str, Any]:
    return {
        "node": node.name,
        "region": node.region,
        "ip_address": node.ip_address,
        "port_number": node.port_number,
        "app_context": node.app_context,
        "hostname": node.hostname,
        "pid": node.pid,
        "incarnation": uuid.UUID(incarnation),
        "lease": node.lease_timeout,
        "interval": node.heartbeat_interval,
        "verdict": JOINING_VERDICT,
        "retention_days": node.retention_days,
        "services": list(services),
    }


def register_node(
    connection: Connection,
    node: Registration,
    incarnation: str,
    services: Sequence[str] = (),
) -> None:
    """Register or re-register a node under a new incarnation, as joining, unless a live or
    joining process holds the name (`Refused`, saying which).

    The node keeps its `draining` flag across restarts; everything about the process is new.
    """
    params = _registration_params(node, incarnation, services)
    taken = connection.exec_driver_sql(REGISTER_SQL, params).scalar()
    if not taken:
        raise Refused(name_holder(connection, node.name) or f"node {node.name} is taken")


def register(
    settings: Settings, node: Registration, incarnation: str, services: Sequence[str] = ()
) -> None:
    """`register_node` in one round trip, as its own transaction (a node's start)."""
    params = _registration_params(node, incarnation, services)
    if one_round_trip(settings, REGISTER_SQL, params):
        return
    with transaction(settings) as connection:
        holder = name_holder(connection, node.name)
    raise Refused(holder or f"node {node.name} is taken")


def _is_joining(row: Row[Any]) -> bool:
    return bool(not row.is_active and row.joining_until is not None)


def _holds_name(row: Row[Any]) -> bool:
    if row.stopped_at is not None:
        return False
    if _is_joining(row):
        return bool(row.joining_left.total_seconds() > 0)
    return bool(row.is_active and row.left.total_seconds() > 0)


JOIN_HOLD_SQL = (
    "UPDATE server_registry SET joining_until = clock_timestamp() "
    "+ lease_timeout_s * interval '1 second' "
    "WHERE node_name = %(node)s AND incarnation = %(incarnation)s AND stopped_at IS NULL "
    "AND joining_until IS NOT NULL RETURNING true"
)


def hold_while_joining(settings: Settings, me: Identity) -> bool:
    """Push this joining incarnation's hold on its name a lease further, in one round trip.

    Returns False once there is nothing to hold: it joined (its first renewal through its
    consumer), or it was stopped or replaced. Holding is not renewing: the node stays
    not live, and owns and judges nothing, until it joins."""
    params = {"node": me.name, "incarnation": uuid.UUID(me.incarnation)}
    return bool(one_round_trip(settings, JOIN_HOLD_SQL, params))


def _mine(me: Identity) -> Any:
    return (
        (nodes_t.c.node_name == me.name)
        & (nodes_t.c.incarnation == uuid.UUID(me.incarnation))
        & nodes_t.c.stopped_at.is_(None)
    )


def _lock_service(connection: Connection, service: str) -> tuple[Row[Any], Snapshot]:
    """Lock the service's row, then read every node: the facts a change of owner re-checks."""
    locked = connection.execute(
        select(services_t).where(services_t.c.service_type == service).with_for_update()
    ).one()
    snapshot = Snapshot(
        database_now(connection), read_nodes(connection), (_service(locked._mapping),)
    )
    return locked, snapshot


def _set_owner(
    connection: Connection,
    locked: Row[Any],
    node_id: int | None,
    reason: str,
    actor: str,
    why: str,
    cut: int | None = None,
) -> int:
    """Give the locked service to `node_id` (None: nobody) at the next epoch; return it. `cut`:
    how many runs of a handover this change cuts (the trigger writes it and how long the
    handover waited into the history, and ends the handover)."""
    connection.execute(
        update(services_t)
        .where(services_t.c.id == locked.id)
        .values(
            service_registry_id=node_id,
            epoch=locked.epoch + 1,
            acquired_at=NOW,
            acquired_reason=reason,
            acquired_by=actor,
            acquired_detail=why,
            handover_cut=cut,
        )
    )
    return int(locked.epoch) + 1


def _current_self(snapshot: Snapshot, me: Identity) -> Node | None:
    mine = snapshot.node(me.name)
    return mine if mine is not None and mine.incarnation == me.incarnation else None


InFlight = Callable[[Connection], "list[str] | None"]
"""What of a service still runs, as the database shows it ([]: nothing; None: the database
cannot tell, only the owner knows)."""


@dataclass(frozen=True)
class Grace:
    """What a planned change of owner waits for: at most `seconds` (None: the owner's drain
    grace while it drains, else `default`), for the work `running` finds still running on
    the owner."""

    seconds: float | None
    running: InFlight
    default: float = 0.0


NO_GRACE = Grace(0.0, lambda _connection: [])


@dataclass(frozen=True)
class Handing:
    """A planned change of owner: `moved` at `epoch`, or handing over, with `running` left to
    finish until `until` (database time)."""

    epoch: int
    moved: bool
    running: tuple[str, ...] = ()
    until: datetime | None = None


def _plan(
    connection: Connection,
    locked: Row[Any],
    snapshot: Snapshot,
    to: Node | None,
    change: tuple[str, str, str],
    grace: Grace,
) -> Handing:
    """Move the locked service to `to` now when its owner is gone, no grace is given, nothing
    runs or the grace has ended (cutting what runs); otherwise mark it as handing over, so the
    owner starts nothing new and hands it over once its running work ended."""
    reason, actor, why = change
    service = _service(locked._mapping)
    owner = snapshot.node_by_id(service.owner_id)
    live = owner is not None and owner.is_live(snapshot.now)
    running = grace.running(connection) if live else []
    ended = to is not None and grace_ended(snapshot, to.name, service) is not None
    seconds = grace.seconds
    if seconds is None:
        seconds = drain_grace(snapshot, service.name, grace.default)
    if not live or seconds <= 0 or running == [] or ended:
        cut = None if running is None else len(running)
        epoch = _set_owner(connection, locked, to.id if to else None, reason, actor, why, cut)
        return Handing(epoch, moved=True)
    until = connection.execute(
        update(services_t)
        .where(services_t.c.id == locked.id)
        .values(
            handover_to=to.name if to else None,
            handover_since=func.coalesce(services_t.c.handover_since, NOW),
            handover_until=func.coalesce(
                services_t.c.handover_until, NOW + timedelta(seconds=seconds)
            ),
            handover_reason=reason,
            handover_actor=actor,
            handover_detail=why,
        )
        .returning(services_t.c.handover_until)
    ).scalar_one()
    return Handing(int(locked.epoch), moved=False, running=tuple(running or ()), until=until)


def acquire(
    connection: Connection, me: Identity, action: Acquire, actor: str, policy: Policy
) -> str | None:
    """Invariant 2: lock the service row, re-check, then move it to this node at epoch + 1.

    Returns None when the service was taken, or the reason it was not (another node won,
    the owner came back, this node's own lease lapsed).
    """
    return take(connection, me, action, actor, policy, NO_GRACE)[0]


def take(
    connection: Connection, me: Identity, action: Acquire, actor: str, policy: Policy, grace: Grace
) -> tuple[str | None, Handing | None]:
    """`acquire`, where a failback from a live owner first gives its running work `grace`
    (a planned handover). Returns the refusal, or how the service is changing hands."""
    locked, snapshot = _lock_service(connection, action.service)
    mine = _current_self(snapshot, me)
    if mine is None:
        return STALE_INCARNATION, None
    refusal = refusal_to_acquire(snapshot, me.name, action, policy)
    if refusal:
        return refusal, None
    planned = action.reason == "failback" or locked.handover_since is not None
    change = (action.reason, actor, action.why)
    return None, _plan(connection, locked, snapshot, mine, change, grace if planned else NO_GRACE)


def move_here(
    connection: Connection,
    me: Identity,
    service: str,
    actor: str,
    why: str,
    grace: Grace = NO_GRACE,
) -> tuple[str | None, Handing]:
    """A manual failover, run by the target: take `service` under the lock if it may move
    here, at once or (a live owner with work running) after a planned handover.

    Returns (None, how it is changing hands), or (the reason it was refused, current epoch).
    """
    locked, snapshot = _lock_service(connection, service)
    mine = _current_self(snapshot, me)
    refusal = move_refusal(snapshot, me.name, service) if mine else STALE_INCARNATION
    if refusal or mine is None:
        return refusal, Handing(int(locked.epoch), moved=False)
    return None, _plan(connection, locked, snapshot, mine, ("manual", actor, why), grace)


def drain_grace(snapshot: Snapshot, service: str, default: float) -> float:
    """The grace a move of `service` gives its owner's running work: its owner's drain grace
    while it drains (set by `failover drain --grace/--now`), else `default`."""
    current = snapshot.service(service)
    owner = snapshot.node_by_id(current.owner_id) if current else None
    if owner is not None and owner.draining and owner.drain_grace is not None:
        return owner.drain_grace
    return default


@dataclass(frozen=True)
class Finished:
    """The end of a handover by its owner: moved to `to` at `epoch` (None: released), or
    `cancelled` for that reason (the target can no longer take it)."""

    service: str
    epoch: int
    to: Node | None
    cancelled: str | None = None


def finish_handover(
    connection: Connection, me: Identity, service: str, running: InFlight
) -> Finished | None:
    """On the owner, once its own work for the service ended: hand the service over now.
    None while it is not handing over to a node or `running` still finds work (a graceful
    stop releases its services itself, all at once: `release_services`)."""
    locked, snapshot = _lock_service(connection, service)
    mine = _current_self(snapshot, me)
    current = _service(locked._mapping)
    if mine is None or current.owner_id != mine.id or current.handover_to is None:
        return None
    if running(connection):
        return None
    target = snapshot.node(current.handover_to) if current.handover_to else None
    if current.handover_to is not None:
        refusal = move_refusal(snapshot, current.handover_to, service)
        if refusal or target is None:
            _end_handover(connection, locked)
            return Finished(service, int(locked.epoch), target, refusal or "gone")
    reason = current.handover_reason or "manual"
    actor, why = locked.handover_actor or me.name, locked.handover_detail or reason
    epoch = _set_owner(connection, locked, target.id if target else None, reason, actor, why, 0)
    return Finished(service, epoch, target)


def _end_handover(connection: Connection, locked: Row[Any]) -> None:
    """Give up a handover without a change of owner: the owner carries on."""
    connection.execute(
        update(services_t)
        .where(services_t.c.id == locked.id)
        .values(
            handover_to=None,
            handover_since=None,
            handover_until=None,
            handover_reason=None,
            handover_actor=None,
            handover_detail=None,
        )
    )


def begin_stop(
    connection: Connection, me: Identity, grace: float, running: Callable[[str], InFlight]
) -> dict[str, list[str] | None]:
    """A graceful stop with work running: mark every service this incarnation owns as handing
    over (released at the end), so that it starts nothing new. Returns what runs, per service;
    nothing is marked when nothing runs (the stop then releases at once)."""
    owned = _owned(connection, me)
    if not owned or grace <= 0:
        return {}
    found = {service: running(service)(connection) for service in owned}
    if all(left == [] for left in found.values()):
        return {}
    for service in owned:
        locked, snapshot = _lock_service(connection, service)
        change = ("release", me.name, "graceful stop")
        _plan(connection, locked, snapshot, None, change, Grace(grace, lambda _c: None))
    return found


def _owned(connection: Connection, me: Identity) -> list[str]:
    """The services this incarnation owns, by name."""
    rows = connection.execute(
        select(services_t.c.service_type)
        .join(nodes_t, nodes_t.c.id == services_t.c.service_registry_id)
        .where(_mine(me))
        .order_by(services_t.c.service_type)
    ).scalars()
    return list(rows.all())


def release_services(
    connection: Connection,
    me: Identity,
    why: str = "graceful stop",
    running: Callable[[str], InFlight] | None = None,
) -> list[tuple[str, int]]:
    """Invariant 7: stop this incarnation and hand back its services (reason `release`).

    Returns each released service with its new epoch. The node is marked stopped first,
    so a heartbeat still running in this process can no longer renew or claim anything.
    With `running`, the history counts, per service, the runs the release cuts.
    """
    owned = _owned(connection, me)
    node_id = connection.execute(
        update(nodes_t)
        .where(_mine(me))
        .values(stopped_at=NOW, is_active=False, last_verdict=f"stopped: {why}")
        .returning(nodes_t.c.id)
    ).scalar()
    if node_id is None:
        return []
    released = []
    for service in owned:
        locked, _snapshot = _lock_service(connection, service)
        left = running(service)(connection) if running else None
        cut = None if left is None else len(left)
        epoch = _set_owner(connection, locked, None, "release", me.name, why, cut)
        released.append((service, epoch))
    return released


def count_restored(connection: Connection, me: Identity, count: int) -> None:
    """Count files this node put back into a hot folder (no claim left for them)."""
    connection.execute(
        update(nodes_t)
        .where(nodes_t.c.node_name == me.name)
        .values(restored_files=nodes_t.c.restored_files + count)
    )


def record_rejection(connection: Connection, me: Identity) -> None:
    """Count a fenced (rejected) side effect against this node, for metrics."""
    connection.execute(
        update(nodes_t)
        .where(nodes_t.c.node_name == me.name)
        .values(rejected_side_effects=nodes_t.c.rejected_side_effects + 1)
    )


def set_draining(
    connection: Connection, node: str, draining: bool, grace: float | None = None
) -> bool:
    """Store the node's maintenance flag and the grace its handovers give running work
    (None: the setting); False if there is no such node."""
    result = connection.execute(
        update(nodes_t)
        .where(nodes_t.c.node_name == node)
        .values(draining=draining, drain_grace_s=grace if draining else None)
    )
    return result.rowcount == 1
