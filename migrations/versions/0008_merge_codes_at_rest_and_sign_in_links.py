"""one head again: codes encrypted at rest (0006) and sign-in links and session versions (0007),
both made on 0005, touch different tables; a database at either gets the other

Revision ID: 0008
Revises: 0006, 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

revision = "0008"
down_revision = ("0006", "0007")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
