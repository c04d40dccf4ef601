"""the dashboard's numbers: codes in stock per batch, claims rolled up per hour, and the
index that finds a program's claims of the last hours

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("codebatch") as batch:
        batch.add_column(sa.Column("in_stock_count", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.create_check_constraint("ck_codebatch_stock_positive", "in_stock_count >= 0")
    # Batches imported before this revision: their codes in stock, counted once.
    op.execute("UPDATE codebatch SET in_stock_count = (SELECT count(*) FROM code "
               "WHERE code.batch_id = codebatch.id AND code.status = 'available')")
    op.create_table(
        "claimhour",
        sa.Column("program_id", sa.Integer(), sa.ForeignKey("program.id"), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claims", sa.Integer(), nullable=False),
        sa.Column("in_stock", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("program_id", "hour"),
    )
    op.create_index("ix_claim_program_requested", "claim", ["program_id", "requested_at"])


def downgrade() -> None:
    op.drop_index("ix_claim_program_requested", table_name="claim")
    op.drop_table("claimhour")
    with op.batch_alter_table("codebatch") as batch:
        batch.drop_constraint("ck_codebatch_stock_positive", type_="check")
        batch.drop_column("in_stock_count")
