"""sign-in links superseded by newer ones; sessions the server can end

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("creator") as batch:
        batch.add_column(sa.Column("login_used_nonce", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("session_version", sa.Integer(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("creator") as batch:
        batch.drop_column("session_version")
        batch.drop_column("login_used_nonce")
