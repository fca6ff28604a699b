"""Count the side effects each node had rejected by the epoch fence (for metrics).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE server_registry ADD COLUMN rejected_side_effects BIGINT NOT NULL DEFAULT 0"
    )
