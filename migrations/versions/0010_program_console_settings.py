"""programs: a time zone for the claim window, a support contact, and claims paused

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD and DROP COLUMN (SQLite 3.35+ too): a batch copy of the program table would
    # turn the CHECK of in_stock_count into one of the table, which 0003's downgrade can't drop.
    op.add_column("program", sa.Column("time_zone", sa.String(64), nullable=False,
                                       server_default="UTC"))
    op.add_column("program", sa.Column("support_email", sa.String(320), nullable=True))
    op.add_column("program", sa.Column("claims_paused_at", sa.DateTime(timezone=True),
                                       nullable=True))


def downgrade() -> None:
    op.drop_column("program", "claims_paused_at")
    op.drop_column("program", "support_email")
    op.drop_column("program", "time_zone")
