"""the audit log is filtered by who and by what through indexes that keep its time order

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_actor_at", "auditevent", ["actor", "at", "id"])
    op.create_index("ix_audit_action_at", "auditevent", ["action", "at", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_action_at", table_name="auditevent")
    op.drop_index("ix_audit_actor_at", table_name="auditevent")
