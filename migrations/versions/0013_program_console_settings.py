"""programs: a time zone for the claim window, a support contact, and claims paused

Revision ID: 0013
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("program") as batch:
        batch.add_column(sa.Column("time_zone", sa.String(64), nullable=False,
                                   server_default="UTC"))
        batch.add_column(sa.Column("support_email", sa.String(320), nullable=True))
        batch.add_column(sa.Column("claims_paused_at", sa.DateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("program") as batch:
        batch.drop_column("claims_paused_at")
        batch.drop_column("support_email")
        batch.drop_column("time_zone")
