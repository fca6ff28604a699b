"""Alembic environment for celery-failover: run by `failover db upgrade` with a connection.

The caller passes an open SQLAlchemy connection in `config.attributes["connection"]`; an
advisory lock makes concurrent upgrades from several nodes take turns instead of racing.
"""

from alembic import context
from sqlalchemy import text

MIGRATION_LOCK_KEY = 0x6661696C6F766572  # "failover"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    context.run_migrations()
