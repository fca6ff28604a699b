"""The schema: Alembic and schema.sql give the same catalog; upgrades are idempotent."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.servers import HEAD_REVISION
from workers.services import app_script, folder_monitor
from workers.settings import load_settings
from workers.stores.database import migrations_dir, upgrade_schema
from workers.stores.tables import metadata

SCHEMA_SQL = Path(__file__).parents[2] / "schema" / "schema.sql"

CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,
               column_default
        FROM information_schema.columns WHERE table_schema = 'public'
          AND table_name <> 'alembic_version'""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'alembic_version'""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal""",
    "functions": """
        SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace""",
    "storage": """
        SELECT relname, array_to_string(reloptions, ',') FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL""",
    "rows": "SELECT service_type, epoch FROM service_status",
}


def catalog(url: str) -> dict[str, set[tuple]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        result = {
            name: {tuple(row) for row in connection.execute(text(sql))}
            for name, sql in CATALOG.items()
        }
    engine.dispose()
    return result


def test_schema_sql_creates_exactly_what_the_migrations_create(servers, database_url):
    # Given a second, empty database loaded from schema.sql by plain psql-style execution
    name = f"failover_sql_{uuid.uuid4().hex[:10]}"
    admin = create_engine(servers.admin_database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    plain_url = make_url(database_url).set(database=name)
    try:
        libpq = plain_url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as raw:
            raw.execute(SCHEMA_SQL.read_text())
        # Then both catalogs are the same, object for object
        migrated = catalog(database_url)
        plain = catalog(plain_url.render_as_string(hide_password=False))
        for kind in CATALOG:
            assert migrated[kind] == plain[kind], kind
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_is_idempotent(database_url):
    settings = load_settings(database_url=database_url)
    before = catalog(database_url)
    assert upgrade_schema(settings) == HEAD_REVISION
    assert upgrade_schema(settings) == HEAD_REVISION
    assert catalog(database_url) == before


def test_table_definitions_match_the_database(database_url):
    # The built-in services declare their ledgers on the same metadata, in their own folders
    assert {"folder_file", "script_run"} <= set(metadata.tables)
    assert folder_monitor.ledger.folder_file.metadata is app_script.ledger.script_run.metadata
    columns = catalog(database_url)["columns"]
    in_database = {(table, column) for table, column, *_ in columns}
    in_code = {
        (table.name, column.name) for table in metadata.tables.values() for column in table.columns
    }
    assert in_code == in_database


def test_seed_columns_are_kept_column_for_column(database_url):
    columns = {(t, c): kind for t, c, kind, *_ in catalog(database_url)["columns"]}
    assert columns[("server_registry", "id")] == "bigint"
    for name in ("ip_address", "app_context", "port_number"):
        assert columns[("server_registry", name)] == "character varying"
    assert columns[("server_registry", "is_active")] == "boolean"
    assert columns[("service_status", "service_registry_id")] == "bigint"
    assert columns[("service_status", "service_type")] == "character varying"


def test_migrations_are_found_in_the_checkout():
    assert (migrations_dir() / "versions" / "0001_initial.py").is_file()
