"""a program's failed or overdue code mails are read in id order, per status, from a partial
index of the mails not sent

Revision ID: 0020
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
# Another branch adds 0019: the merger points this at it.
down_revision = "0018"
branch_labels = None
depends_on = None

UNDELIVERED = sa.text("status IN ('queued', 'sending', 'failed')")


def upgrade() -> None:
    op.create_index("ix_outbound_undelivered", "outboundemail", ["status", "id"],
                    postgresql_where=UNDELIVERED, sqlite_where=UNDELIVERED)


def downgrade() -> None:
    op.drop_index("ix_outbound_undelivered", table_name="outboundemail")
