"""partial index of the waiting line (pending and waitlisted claims)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WAITING = "state IN ('pending', 'waitlisted')"


def upgrade() -> None:
    # What allocation reads, in claim order: partial, so the plan that reads it stays the
    # obvious one however stale the statistics (see the models).
    op.create_index("ix_claim_waiting", "claim", ["program_id", "id"],
                    postgresql_where=sa.text(WAITING), sqlite_where=sa.text(WAITING))


def downgrade() -> None:
    op.drop_index("ix_claim_waiting", table_name="claim")
