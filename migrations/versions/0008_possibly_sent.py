"""a mail whose attempt was cut off mid-send is marked possibly sent

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outboundemail") as batch:
        batch.add_column(sa.Column("possibly_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outboundemail") as batch:
        batch.drop_column("possibly_sent_at")
