"""Put nodes and owners into a real database in a chosen state, through the real SQL paths."""

from __future__ import annotations

from sqlalchemy import text

from workers.settings import Settings
from workers.settings.process import Identity, new_incarnation
from workers.stores import registration
from workers.stores.database import transaction
from workers.stores.registration import Registration


def add_node(
    settings: Settings,
    name: str,
    region: str = "r1",
    beat_age: float = 0.0,
    lease_age: float = 100.0,
    lease: float = 1.5,
    joined: bool = True,
) -> Identity:
    """Register `name`, then age its last heartbeat by `beat_age` s and its lease by `lease_age` s.

    `joined`: as after its first heartbeat through its consumer (live); else still joining."""
    me = Identity(name, new_incarnation())
    with transaction(settings) as connection:
        registration.register_node(
            connection, Registration(name, region, lease, 0.3), me.incarnation
        )
    if joined:
        join(settings, name)
    age_node(settings, name, beat_age, lease_age)
    return me


def join(settings: Settings, name: str) -> None:
    """What `name`'s first renewal through its consumer does: live, no longer joining."""
    with transaction(settings) as connection:
        connection.execute(
            text(
                "UPDATE server_registry SET is_active = true, joining_until = NULL, "
                "last_heartbeat_at = clock_timestamp(), lease_started_at = clock_timestamp() "
                "WHERE node_name = :name"
            ),
            {"name": name},
        )


def age_node(settings: Settings, name: str, beat_age: float, lease_age: float) -> None:
    """Set `name`'s last heartbeat `beat_age` s and the start of its lease `lease_age` s ago."""
    with transaction(settings) as connection:
        connection.execute(
            text(
                "UPDATE server_registry SET "
                "last_heartbeat_at = clock_timestamp() - make_interval(secs => :beat), "
                "lease_started_at = clock_timestamp() - make_interval(secs => :lease) "
                "WHERE node_name = :name"
            ),
            {"beat": beat_age, "lease": lease_age, "name": name},
        )


def lapse(settings: Settings, name: str) -> None:
    """Age `name`'s row by its whole lease and a second more, instead of sleeping that long:
    its last heartbeat and the start of its lease move back, as if that time had passed
    with no renewal, so that its lease has run out on the database clock."""
    with transaction(settings) as connection:
        connection.execute(
            text(
                "UPDATE server_registry SET "
                "last_heartbeat_at = last_heartbeat_at - make_interval(secs => lease_timeout_s + 1), "
                "lease_started_at = lease_started_at - make_interval(secs => lease_timeout_s + 1) "
                "WHERE node_name = :name"
            ),
            {"name": name},
        )


def give(settings: Settings, service: str, node: str, reason: str = "startup") -> int:
    """Make `node` the owner of `service` (the trigger writes history); return the new epoch."""
    with transaction(settings) as connection:
        return int(
            connection.execute(
                text(
                    "UPDATE service_status SET epoch = epoch + 1, acquired_reason = :reason, "
                    "acquired_at = clock_timestamp(), service_registry_id = "
                    "(SELECT id FROM server_registry WHERE node_name = :node) "
                    "WHERE service_type = :service RETURNING epoch"
                ),
                {"service": service, "node": node, "reason": reason},
            ).scalar_one()
        )


def owner_and_epoch(settings: Settings, service: str) -> tuple[str | None, int]:
    with transaction(settings) as connection:
        row = connection.execute(
            text(
                "SELECT r.node_name, s.epoch FROM service_status s LEFT JOIN server_registry r "
                "ON r.id = s.service_registry_id WHERE s.service_type = :service"
            ),
            {"service": service},
        ).one()
    return row.node_name, row.epoch


def history(settings: Settings, service: str) -> list[tuple[str | None, str | None, int, str]]:
    with transaction(settings) as connection:
        rows = connection.execute(
            text(
                "SELECT from_node, to_node, epoch, reason FROM ownership_history "
                "WHERE service_type = :service ORDER BY epoch"
            ),
            {"service": service},
        )
        return [(r.from_node, r.to_node, r.epoch, r.reason) for r in rows]
