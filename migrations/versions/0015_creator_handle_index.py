"""creators are searched by handle prefix through an index

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_creator_handle", "creator", ["handle"])


def downgrade() -> None:
    op.drop_index("ix_creator_handle", table_name="creator")
