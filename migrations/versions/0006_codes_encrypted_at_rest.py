"""codes encrypted at rest: a Fernet token, the key that made it and a keyed fingerprint per
code; the clear value is gone

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

The keys are those of the configuration at migration time: ``init-db`` passes the app's
(``migrate.upgrade``); a bare ``alembic upgrade`` reads config.py, which refuses a PostgreSQL
database without CODE_ENCRYPTION_KEY. They are read only when there are codes to convert.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BATCH = 5000  # codes converted per statement: memory stays flat however many there are


def _cipher():
    from config import Config
    from wellness_perks.services.code_cipher import CodeCipher

    attributes = context.config.attributes
    keys = attributes.get("code_keys")
    if keys is None:
        settings = Config({"DATABASE_URL": attributes.get("database_url")
                           or Config().DATABASE_URL})
        keys = {"CODE_ENCRYPTION_KEY": settings.CODE_ENCRYPTION_KEY,
                "CODE_FINGERPRINT_KEY": settings.CODE_FINGERPRINT_KEY}
    return CodeCipher(keys["CODE_ENCRYPTION_KEY"], keys.get("CODE_FINGERPRINT_KEY") or "")


def _batches(conn, select_after):
    """Rows of ``select_after`` (a statement taking :after and :n), in id order, a batch at a
    time."""
    after = 0
    while True:
        rows = conn.execute(select_after, {"after": after, "n": BATCH}).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table("code") as batch:
        batch.add_column(sa.Column("value_encrypted", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("key_id", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("fingerprint", sa.LargeBinary(length=32), nullable=True))

    conn = op.get_bind()
    cipher = None
    write = sa.text("UPDATE code SET value_encrypted = :v, key_id = :k, fingerprint = :f "
                    "WHERE id = :i")
    select = sa.text("SELECT id, value FROM code WHERE id > :after ORDER BY id LIMIT :n")
    for rows in _batches(conn, select):
        cipher = cipher or _cipher()
        values = [value for _id, value in rows]
        conn.execute(write, [
            {"i": code_id, "v": token, "k": cipher.newest_key_id, "f": fingerprint}
            for (code_id, _), token, fingerprint in zip(
                rows, cipher.encrypt_many(values), cipher.fingerprints(values), strict=True)])

    with op.batch_alter_table("code") as batch:
        batch.drop_constraint("uq_code_program_value", type_="unique")
        batch.drop_column("value")
        batch.alter_column("value_encrypted", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("key_id", existing_type=sa.String(length=16), nullable=False)
        batch.alter_column("fingerprint", existing_type=sa.LargeBinary(length=32),
                           nullable=False)
        batch.create_unique_constraint("uq_code_fingerprint_program",
                                       ["fingerprint", "program_id"])


def downgrade() -> None:
    with op.batch_alter_table("code") as batch:
        batch.add_column(sa.Column("value", sa.String(length=64), nullable=True))

    conn = op.get_bind()
    cipher = None
    write = sa.text("UPDATE code SET value = :v WHERE id = :i")
    select = sa.text("SELECT id, value_encrypted FROM code WHERE id > :after ORDER BY id "
                     "LIMIT :n")
    for rows in _batches(conn, select):
        cipher = cipher or _cipher()
        conn.execute(write, [{"i": code_id, "v": cipher.decrypt(token)}
                             for code_id, token in rows])

    with op.batch_alter_table("code") as batch:
        batch.drop_constraint("uq_code_fingerprint_program", type_="unique")
        batch.drop_column("fingerprint")
        batch.drop_column("key_id")
        batch.drop_column("value_encrypted")
        batch.alter_column("value", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("uq_code_program_value", ["program_id", "value"])
