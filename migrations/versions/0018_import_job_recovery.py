"""an import job stuck queued or running is found by its heartbeat and tried again, a few times

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN, nullable or with a default: no table copy on SQLite.
    op.add_column("importjob", sa.Column("heartbeat_at", sa.DateTime(timezone=True),
                                         nullable=True))
    op.add_column("importjob", sa.Column("attempts", sa.Integer(), nullable=False,
                                         server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("importjob") as batch:
        batch.drop_column("attempts")
        batch.drop_column("heartbeat_at")
