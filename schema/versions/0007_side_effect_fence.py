"""The fence outside the database: file identity, in-flight handler marks, script-run
incarnations; a finished file record no longer blocks a new arrival of the same name.

Revision ID: 0007
Revises: 0006
"""

from pathlib import Path

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(Path(__file__).with_suffix(".sql").read_text())
