"""API tokens: bearer tokens for scripts, made and revoked by admins, kept as a hash

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "apitoken",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("manager.id"), nullable=False),
        _ts("created_at", nullable=False),
        _ts("expires_at"),
        _ts("last_used_at"),
        _ts("revoked_at"),
        sa.Column("revoked_by", sa.Integer(), sa.ForeignKey("manager.id"), nullable=True),
        sa.CheckConstraint("role IN ('viewer', 'manager', 'admin')", name="ck_apitoken_role"),
        sa.CheckConstraint("revoked_by IS NULL OR revoked_at IS NOT NULL",
                           name="ck_apitoken_revoked_by"),
    )


def downgrade() -> None:
    op.drop_table("apitoken")
