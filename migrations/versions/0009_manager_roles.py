"""managers have a role, sessions the server can end, and can be disabled

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("manager") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False,
                                   server_default="manager"))
        batch.add_column(sa.Column("session_version", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint("ck_manager_role",
                                      "role IN ('viewer', 'manager', 'admin')")


def downgrade() -> None:
    with op.batch_alter_table("manager") as batch:
        batch.drop_constraint("ck_manager_role", type_="check")
        batch.drop_column("last_login_at")
        batch.drop_column("disabled_at")
        batch.drop_column("session_version")
        batch.drop_column("role")
