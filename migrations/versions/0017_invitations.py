"""invitations of a program's creators, their one reminder and their opt-out; invitation mails
name their program

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.add_column("outboundemail", sa.Column("program_id", sa.Integer(), nullable=True))
    op.create_index("ix_outbound_program_kind_status", "outboundemail",
                    ["program_id", "kind", "status"],
                    postgresql_where=sa.text("program_id IS NOT NULL"),
                    sqlite_where=sa.text("program_id IS NOT NULL"))
    op.create_table(
        "invitation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("program_id", sa.Integer(), sa.ForeignKey("program.id"), nullable=False),
        sa.Column("creator_id", sa.Integer(), sa.ForeignKey("creator.id"), nullable=False),
        _ts("invited_at", nullable=False),
        sa.Column("invitation_mail_id", sa.Integer(), sa.ForeignKey("outboundemail.id"),
                  nullable=False, unique=True),
        _ts("reminded_at"),
        sa.Column("reminder_mail_id", sa.Integer(), sa.ForeignKey("outboundemail.id"),
                  nullable=True, unique=True),
        _ts("opted_out_at"),
        sa.UniqueConstraint("program_id", "creator_id", name="uq_invitation_program_creator"),
        sa.CheckConstraint("(reminded_at IS NULL) = (reminder_mail_id IS NULL)",
                           name="ck_invitation_reminder_mail"),
    )
    op.create_index("ix_invitation_creator_id", "invitation", ["creator_id"])


def downgrade() -> None:
    op.drop_index("ix_invitation_creator_id", table_name="invitation")
    op.drop_table("invitation")
    op.drop_index("ix_outbound_program_kind_status", table_name="outboundemail")
    with op.batch_alter_table("outboundemail") as batch:
        batch.drop_column("program_id")
