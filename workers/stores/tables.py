"""The tables as SQLAlchemy Core sees them; the DDL lives in `schema/` (Alembic, schema.sql).

`server_registry` and `service_status` keep the seed article's columns, column for column
(`is_active` is its BIT as a BOOLEAN); everything after them is ours. A built-in service's
ledger is declared on `metadata` by that service's own `ledger` module
(`workers.services.folder_monitor`, `workers.services.app_script`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)

metadata = MetaData()

server_registry = Table(
    "server_registry",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("ip_address", String(255)),
    Column("app_context", String(255)),
    Column("port_number", String(255)),
    Column("is_active", Boolean, nullable=False),
    Column("node_name", String(63), nullable=False, unique=True),
    Column("region", String(63), nullable=False),
    Column("incarnation", Uuid, nullable=False),
    Column("hostname", String(255)),
    Column("pid", Integer),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("lease_started_at", DateTime(timezone=True), nullable=False),
    Column("lease_timeout_s", Float, nullable=False),
    Column("heartbeat_interval_s", Float, nullable=False),
    Column("stopped_at", DateTime(timezone=True)),
    Column("draining", Boolean, nullable=False),
    Column("app_healthy", Boolean),
    Column("last_verdict", Text),
    Column("rejected_side_effects", BigInteger, nullable=False),
    Column("db_round_trip_ms", Float),
    Column("broker_round_trip_ms", Float),
    Column("heartbeat_cycle_ms", Float),
    Column("database_server", Text),
    Column("database_changed_at", DateTime(timezone=True)),
    Column("broker_server", Text),
    Column("broker_changed_at", DateTime(timezone=True)),
    Column("restored_files", BigInteger, nullable=False),
    Column("drain_grace_s", Float),
    Column("joining_until", DateTime(timezone=True)),
    Column("database_encrypted", Boolean),
    Column("broker_encrypted", Boolean),
)

service_status = Table(
    "service_status",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("service_registry_id", BigInteger, ForeignKey("server_registry.id")),
    Column("service_type", String(255), nullable=False, unique=True),
    Column("epoch", BigInteger, nullable=False),
    Column("acquired_at", DateTime(timezone=True)),
    Column("acquired_reason", String(32)),
    Column("acquired_by", String(255)),
    Column("acquired_detail", Text),
    Column("home_region", String(63)),
    Column("handover_to", String(63)),
    Column("handover_since", DateTime(timezone=True)),
    Column("handover_until", DateTime(timezone=True)),
    Column("handover_reason", String(32)),
    Column("handover_actor", String(255)),
    Column("handover_detail", Text),
    Column("handover_cut", Integer),
)

ownership_history = Table(
    "ownership_history",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("service_type", String(255), nullable=False),
    Column("from_node", String(63)),
    Column("to_node", String(63)),
    Column("epoch", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("actor", String(255)),
    Column("detail", Text),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("handover_waited_s", Float),
    Column("handover_cut", Integer),
)

service_tick = Table(
    "service_tick",
    metadata,
    Column("service_type", String(255), primary_key=True),
    Column("epoch", BigInteger, primary_key=True),
    Column("node_name", String(63), nullable=False),
    Column("tick_count", BigInteger, nullable=False),
    Column("first_tick_at", DateTime(timezone=True), nullable=False),
    Column("last_tick_at", DateTime(timezone=True), nullable=False),
)

script_schedule = Table(
    "script_schedule",
    metadata,
    Column("script", String(63), primary_key=True),
    Column("last_due_at", DateTime(timezone=True), nullable=False),
)

node_event = Table(
    "node_event",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("node_name", String(63), nullable=False),
    Column("region", String(63), nullable=False),
    Column("event", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", Text),
)
