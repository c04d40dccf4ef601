"""every code mail names its program, and a program's failed or overdue mails are read in id
order, per status, from a partial index of the mails not sent

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

UNDELIVERED = sa.text("status IN ('queued', 'sending', 'failed')")


def upgrade() -> None:
    # A code mail's program is its claim's: written with the mail from now on, filled in here
    # for the mails before (one statement; SQLite and PostgreSQL alike).
    op.execute("UPDATE outboundemail SET program_id = (SELECT claim.program_id FROM claim "
               "WHERE claim.id = outboundemail.claim_id) "
               "WHERE program_id IS NULL AND claim_id IS NOT NULL")
    op.create_index("ix_outbound_undelivered", "outboundemail", ["program_id", "status", "id"],
                    postgresql_where=UNDELIVERED, sqlite_where=UNDELIVERED)


def downgrade() -> None:
    op.drop_index("ix_outbound_undelivered", table_name="outboundemail")
    op.execute("UPDATE outboundemail SET program_id = NULL WHERE claim_id IS NOT NULL")
