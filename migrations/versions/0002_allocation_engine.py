"""allocation engine: country quotas, claim country, assignment history, quota checks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "countryquota",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("program_id", sa.Integer(), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("quota", sa.Integer(), nullable=False),
        sa.Column("allocated_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["program_id"], ["program.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("program_id", "country", name="uq_country_quota"),
        sa.CheckConstraint("allocated_count <= quota", name="ck_country_quota_room"),
        sa.CheckConstraint("quota >= 0", name="ck_country_quota_positive"),
    )
    op.create_table(
        "codeassignment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code_id", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.Integer(), nullable=False),
        sa.Column("program_id", sa.Integer(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("void_reason", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["claim_id"], ["claim.id"]),
        sa.ForeignKeyConstraint(["code_id"], ["code.id"]),
        sa.ForeignKeyConstraint(["program_id"], ["program.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_id"),
    )
    with op.batch_alter_table("codeassignment") as batch_op:
        batch_op.create_index("ix_codeassignment_claim_id", ["claim_id"])
        batch_op.create_index("ix_codeassignment_program_id", ["program_id"])

    # Existing assignments become history.
    op.execute(
        "INSERT INTO codeassignment (code_id, claim_id, program_id, assigned_at) "
        "SELECT c.code_id, c.id, c.program_id, COALESCE(c.decided_at, c.requested_at) "
        "FROM claim c WHERE c.code_id IS NOT NULL"
    )

    with op.batch_alter_table("program") as batch_op:
        batch_op.create_check_constraint("ck_program_quota_room", "allocated_count <= quota")
        batch_op.create_check_constraint("ck_program_quota_positive", "quota >= 0")

    with op.batch_alter_table("claim") as batch_op:
        batch_op.add_column(sa.Column("country", sa.String(length=2), nullable=True))
    op.execute("UPDATE claim SET country = (SELECT creator.country FROM creator "
               "WHERE creator.id = claim.creator_id)")
    with op.batch_alter_table("claim") as batch_op:
        batch_op.alter_column("country", existing_type=sa.String(length=2), nullable=False)

    with op.batch_alter_table("outboundemail") as batch_op:
        batch_op.add_column(sa.Column("code_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sending_started_at", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_foreign_key("fk_outboundemail_code_id", "code", ["code_id"], ["id"])
        batch_op.drop_constraint("uq_outbound_claim_kind", type_="unique")
        batch_op.create_unique_constraint("uq_outbound_claim_code_kind",
                                          ["claim_id", "code_id", "kind"])
    op.execute("UPDATE outboundemail SET code_id = (SELECT claim.code_id FROM claim "
               "WHERE claim.id = outboundemail.claim_id) WHERE claim_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("outboundemail") as batch_op:
        batch_op.drop_constraint("uq_outbound_claim_code_kind", type_="unique")
        batch_op.create_unique_constraint("uq_outbound_claim_kind", ["claim_id", "kind"])
        batch_op.drop_constraint("fk_outboundemail_code_id", type_="foreignkey")
        batch_op.drop_column("sending_started_at")
        batch_op.drop_column("code_id")
    with op.batch_alter_table("claim") as batch_op:
        batch_op.drop_column("country")
    with op.batch_alter_table("program") as batch_op:
        batch_op.drop_constraint("ck_program_quota_positive", type_="check")
        batch_op.drop_constraint("ck_program_quota_room", type_="check")
    op.drop_table("codeassignment")
    op.drop_table("countryquota")
