"""stock counter: program.in_stock_count, kept with every change of stock

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The CHECK goes with the column, so that SQLite adds both with ALTER TABLE ... ADD COLUMN:
    # a batch copy of the program table would fail on the rows that reference it (foreign keys
    # are on).
    with op.batch_alter_table("program") as batch_op:
        batch_op.add_column(sa.Column(
            "in_stock_count", sa.Integer(),
            sa.CheckConstraint("in_stock_count >= 0", name="ck_program_stock_positive"),
            nullable=False, server_default="0"))
    # The stock as it stands; from here on the services keep the counter.
    op.execute("UPDATE program SET in_stock_count = (SELECT count(*) FROM code "
               "WHERE code.program_id = program.id AND code.status = 'available')")


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN, which drops its CHECK too (SQLite 3.35+; no table copy).
    op.drop_column("program", "in_stock_count")
