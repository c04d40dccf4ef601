"""the mails marked possibly sent are found by a partial index

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

POSSIBLY_SENT = sa.text("possibly_sent_at IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_outbound_possibly_sent", "outboundemail", ["claim_id"],
                    postgresql_where=POSSIBLY_SENT, sqlite_where=POSSIBLY_SENT)


def downgrade() -> None:
    op.drop_index("ix_outbound_possibly_sent", table_name="outboundemail")
