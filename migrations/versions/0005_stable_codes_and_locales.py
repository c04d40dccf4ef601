"""stable codes for claim reasons and outbox problems; the language of creators and mails

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The words stored before, and the code each stands for.
CLAIM_REASONS = {
    "not eligible": "not_eligible",
    "claim window closed": "window_closed",
    "quota reached": "quota_reached",
    "country quota reached": "country_quota_reached",
    "out of stock": "out_of_stock",
}
MAIL_PROBLEMS = {
    "its code was voided before it was sent": "code_voided",
    "attempt interrupted (worker stopped mid-send); outcome unknown": "interrupted",
}


def _recode(table: str, column: str, mapping: dict[str, str], reverse: bool = False) -> None:
    for old, new in mapping.items():
        if reverse:
            old, new = new, old
        op.execute(sa.text(f"UPDATE {table} SET {column} = :new WHERE {column} = :old")
                   .bindparams(old=old, new=new))


def _recode_refusal_details(reverse: bool = False) -> None:
    """A refused claim's audit event holds its reason: ``{"reason": "..."}``."""
    for words in ("not eligible", "claim window closed"):
        old, new = (f'{{"reason": "{words}"}}', f'{{"reason": "{CLAIM_REASONS[words]}"}}')
        if reverse:
            old, new = new, old
        op.execute(sa.text("UPDATE auditevent SET detail = :new "
                           "WHERE action = 'claim.refused' AND detail = :old")
                   .bindparams(old=old, new=new))


def upgrade() -> None:
    # ADD COLUMN with a default: no table copy on SQLite (rows refer to both tables).
    op.add_column("creator", sa.Column("locale", sa.String(8), nullable=False,
                                       server_default="en"))
    op.add_column("outboundemail", sa.Column("locale", sa.String(8), nullable=False,
                                             server_default="en"))
    _recode("claim", "reason", CLAIM_REASONS)
    _recode("outboundemail", "last_error", MAIL_PROBLEMS)
    _recode_refusal_details()


def downgrade() -> None:
    _recode_refusal_details(reverse=True)
    _recode("outboundemail", "last_error", MAIL_PROBLEMS, reverse=True)
    _recode("claim", "reason", CLAIM_REASONS, reverse=True)
    op.drop_column("outboundemail", "locale")
    op.drop_column("creator", "locale")
